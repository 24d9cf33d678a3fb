"""Domain layer: pure data model (stdlib only)."""

from annotator.domain.annotation import (
    ImageAnnotation,
    ImageStatus,
    Instance,
    Keypoint,
    Origin,
    Visibility,
)
from annotator.domain.history import Command, UndoStack
from annotator.domain.paths import PathEscapeError, normalize_relpath
from annotator.domain.project import ImageRecord, Project, ProjectSettings
from annotator.domain.schema import KeypointSchema, SchemaError

__all__ = [
    "Command",
    "ImageAnnotation",
    "ImageRecord",
    "ImageStatus",
    "Instance",
    "Keypoint",
    "KeypointSchema",
    "Origin",
    "PathEscapeError",
    "Project",
    "ProjectSettings",
    "SchemaError",
    "UndoStack",
    "Visibility",
    "normalize_relpath",
]
