"""Per-image annotations: keypoints, instances, image status. Immutable values."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum, IntEnum

from annotator.domain.schema import IndexMap


class Visibility(IntEnum):
    """COCO visibility flag."""

    UNLABELLED = 0
    OCCLUDED = 1
    VISIBLE = 2


class Origin(str, Enum):
    """Where a keypoint position came from."""

    MANUAL = "manual"
    PREDICTED = "predicted"
    REVIEWED = "reviewed"


class ImageStatus(str, Enum):
    """Review state of an image."""

    UNLABELLED = "unlabelled"
    PREDICTED = "predicted"
    REVIEWED = "reviewed"
    REFERENCE = "reference"


@dataclass(frozen=True)
class Keypoint:
    """One keypoint in original-image pixel coordinates (0-indexed, x right, y down).

    ``v == UNLABELLED`` means not labelled; its x and y are then meaningless (0 in COCO).
    ``confidence`` is set for predictions only, in [0, 1].
    """

    x: float = 0.0
    y: float = 0.0
    v: Visibility = Visibility.UNLABELLED
    origin: Origin = Origin.MANUAL
    confidence: float | None = None

    def __post_init__(self) -> None:
        # fast path when already typed (loading a project builds ~10^5 of these)
        if type(self.v) is not Visibility:
            object.__setattr__(self, "v", Visibility(int(self.v)))
        if type(self.origin) is not Origin:
            object.__setattr__(self, "origin", Origin(self.origin))
        if not (math.isfinite(self.x) and math.isfinite(self.y)):
            raise ValueError(f"keypoint position ({self.x}, {self.y}) is not finite")
        if self.confidence is not None and not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence {self.confidence} outside [0, 1]")

    @property
    def labelled(self) -> bool:
        return self.v != Visibility.UNLABELLED

    @property
    def user_set(self) -> bool:
        """Placed, moved, reviewed or deliberately deleted by the user (not a prediction
        and not an untouched empty slot): propagation must not overwrite it."""
        return self.origin == Origin.REVIEWED or (self.labelled and self.origin == Origin.MANUAL)

    def moved(self, x: float, y: float) -> Keypoint:
        """This keypoint placed at (x, y) by the user: reviewed if it was predicted."""
        origin = Origin.REVIEWED if self.origin == Origin.PREDICTED else self.origin
        v = self.v if self.labelled else Visibility.VISIBLE
        return replace(self, x=float(x), y=float(y), v=v, origin=origin, confidence=None)


UNLABELLED_KEYPOINT = Keypoint()


Box = tuple[float, float, float, float]  # (x, y, w, h) in original-image pixels


@dataclass(frozen=True)
class Instance:
    """One object in an image: K keypoints and an optional box (x, y, w, h).

    ``box_score`` is set while the box is a detector's prediction (in [0, 1]); None for a box
    the user drew, moved or accepted, or that was imported. ``ann_id`` is the COCO annotation
    id the instance was imported or created with (kept across exports), None until assigned.
    """

    keypoints: tuple[Keypoint, ...]
    bbox: Box | None = None
    box_score: float | None = None
    ann_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keypoints", tuple(self.keypoints))
        if self.bbox is not None:
            box = tuple(float(b) for b in self.bbox)
            if len(box) != 4 or box[2] <= 0 or box[3] <= 0 or not all(map(math.isfinite, box)):
                raise ValueError(f"instance box {self.bbox} must be (x, y, w, h) with w, h > 0")
            object.__setattr__(self, "bbox", box)
        if self.box_score is not None:
            if self.bbox is None:
                raise ValueError("a box score needs a box")
            if not 0.0 <= self.box_score <= 1.0:
                raise ValueError(f"box score {self.box_score} outside [0, 1]")
        if self.ann_id is not None and (isinstance(self.ann_id, bool) or int(self.ann_id) < 1):
            raise ValueError(f"annotation id {self.ann_id!r} must be an integer >= 1")

    @property
    def user_set(self) -> bool:
        """The user drew, moved or accepted the box, or set one of the keypoints:
        propagation must keep this instance."""
        return (self.bbox is not None and self.box_score is None) or any(
            kp.user_set for kp in self.keypoints
        )

    def with_box(self, bbox: Box | None) -> Instance:
        """This instance with ``bbox`` set by the user (a detector's score is dropped)."""
        return replace(self, bbox=bbox, box_score=None)

    @classmethod
    def empty(cls, num_keypoints: int) -> Instance:
        return cls(tuple(UNLABELLED_KEYPOINT for _ in range(num_keypoints)))

    @property
    def num_labelled(self) -> int:
        return sum(1 for kp in self.keypoints if kp.labelled)

    def with_keypoint(self, index: int, keypoint: Keypoint) -> Instance:
        kps = list(self.keypoints)
        kps[index] = keypoint
        return replace(self, keypoints=tuple(kps))

    def remapped(self, index_map: IndexMap, new_size: int) -> Instance:
        """Keypoints moved to their new schema positions; new slots unlabelled."""
        kps = [UNLABELLED_KEYPOINT] * new_size
        for old, new in enumerate(index_map):
            if new is not None and old < len(self.keypoints):
                kps[new] = self.keypoints[old]
        return replace(self, keypoints=tuple(kps))

    def labelled_bounds(self) -> tuple[float, float, float, float] | None:
        """Tight (x, y, w, h) around labelled keypoints, or None when none is labelled."""
        pts = [(kp.x, kp.y) for kp in self.keypoints if kp.labelled]
        if not pts:
            return None
        xs, ys = zip(*pts)
        return (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))


@dataclass(frozen=True)
class ImageAnnotation:
    """Everything known about one image: its instances and its review status."""

    instances: tuple[Instance, ...] = ()
    status: ImageStatus = ImageStatus.UNLABELLED

    def __post_init__(self) -> None:
        object.__setattr__(self, "instances", tuple(self.instances))
        object.__setattr__(self, "status", ImageStatus(self.status))

    def with_instance(self, index: int, instance: Instance) -> ImageAnnotation:
        inst = list(self.instances)
        if index == len(inst):
            inst.append(instance)
        else:
            inst[index] = instance
        return replace(self, instances=tuple(inst))

    def remapped(self, index_map: IndexMap, new_size: int) -> ImageAnnotation:
        return replace(
            self, instances=tuple(i.remapped(index_map, new_size) for i in self.instances)
        )

    @property
    def has_labels(self) -> bool:
        return any(inst.num_labelled for inst in self.instances)

    def worst_confidence(self) -> float | None:
        """Lowest confidence over all instances' predicted keypoints (those not found
        included) and detected boxes not yet accepted, or None when nothing is predicted.
        Computed once per (immutable) annotation: the gallery sorts and filters by it."""
        try:
            return self.__dict__["_worst"]  # type: ignore[no-any-return]
        except KeyError:
            pass
        worst = self._worst_confidence()
        object.__setattr__(self, "_worst", worst)  # a cache, not a field: eq/replace ignore it
        return worst

    def _worst_confidence(self) -> float | None:
        worst: float | None = None
        predicted = Origin.PREDICTED
        for inst in self.instances:
            for kp in inst.keypoints:
                c = kp.confidence
                if c is not None and kp.origin is predicted and (worst is None or c < worst):
                    worst = c
            c = inst.box_score
            if c is not None and (worst is None or c < worst):
                worst = c
        return worst

    def without_instance(self, index: int) -> ImageAnnotation:
        inst = list(self.instances)
        del inst[index]
        return replace(self, instances=tuple(inst))
