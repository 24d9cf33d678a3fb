"""Frozen orders the GUI sends to the worker thread: the worker never reads live objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from annotator.domain import (
    ImageAnnotation,
    ImageRecord,
    KeypointSchema,
    Project,
    ProjectSettings,
)
from annotator.io.video import ImageSource


@dataclass(frozen=True)
class ProjectSnapshot:
    """An immutable copy of everything a job needs from a project."""

    image_root: str
    images: tuple[ImageRecord, ...]
    schema: KeypointSchema
    #: a read-only view of a copy of the project's annotations (one dict copy, no tuple per
    #: image: the snapshot is taken on the GUI thread when a run starts)
    annotations: Mapping[str, ImageAnnotation]
    settings: ProjectSettings

    @classmethod
    def of(cls, project: Project) -> ProjectSnapshot:
        return cls(
            project.image_root,
            project.images,
            project.schema,
            MappingProxyType(project.annotations()),
            project.settings,
        )

    def to_project(self) -> Project:
        """A private project rebuilt from the snapshot (owned by whoever calls this)."""
        return Project.of_checked_parts(self.image_root, self.images, self.schema,
                                        self.annotations, self.settings)


@dataclass(frozen=True)
class PropagateOrder:
    """Transfer keypoints from the references to ``targets`` (None: the job's default)."""

    request_id: int
    snapshot: ProjectSnapshot
    targets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class HeatmapOrder:
    """Similarity of one reference keypoint over every cell of a target image."""

    request_id: int
    image_root: str
    settings: ProjectSettings
    reference: str
    point: tuple[float, float]
    target: str
    category: str = ""  # the schema's name, for a "{category}" prompt
    source: ImageSource | None = None  # loads the two images (video frames decode)


@dataclass(frozen=True)
class DetectOrder:
    """Find boxes in ``request.targets`` with the zero-shot detector of the request's settings
    (``request`` is an annotator.jobs.detect.DetectRequest: plain frozen data)."""

    request_id: int
    request: object
    source: ImageSource | None = None  # loads the targets (video frames decode)


@dataclass(frozen=True)
class TrainOrder:
    """Train the project's keypoint head on the reviewed images of ``snapshot`` and save it
    (``params``: an annotator.matching.head.HeadParams, None for its defaults)."""

    request_id: int
    snapshot: ProjectSnapshot
    params: object | None = None


@dataclass(frozen=True)
class HeadInfoOrder:
    """Read what the project's saved head was trained on (no training, no model load)."""

    request_id: int
    image_root: str
    schema: KeypointSchema
    settings: ProjectSettings
