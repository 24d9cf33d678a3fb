"""Project builders shared by the tests: blank image files, predicted points and
one-instance annotations, so that each test states only what is particular to it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from annotator.domain import (
    ImageAnnotation,
    ImageRecord,
    ImageStatus,
    Instance,
    Keypoint,
    Origin,
    Visibility,
)
from annotator.domain.annotation import Box


def blank_images(root: Path, sizes: Mapping[str, tuple[int, int]],
                 value: int = 0) -> list[ImageRecord]:
    """Write a uniform RGB image of (width, height) per relative path under ``root``."""
    for name, (w, h) in sizes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(root / name)
    return [ImageRecord(name) for name in sizes]


def predicted(x: float, y: float, confidence: float) -> Keypoint:
    """A visible predicted keypoint."""
    return Keypoint(x, y, Visibility.VISIBLE, Origin.PREDICTED, confidence)


def annotation(instances: Iterable[Sequence[Keypoint]], status: ImageStatus,
               boxes: Sequence[Box | None] = ()) -> ImageAnnotation:
    """An annotation of one instance per keypoint sequence; ``boxes``: their user boxes."""
    kps = [tuple(k) for k in instances]
    boxes = tuple(boxes) or (None,) * len(kps)
    return ImageAnnotation(tuple(Instance(k, b) for k, b in zip(kps, boxes, strict=True)),
                           status)


def one_instance(keypoints: Sequence[Keypoint], status: ImageStatus,
                 box: Box | None = None) -> ImageAnnotation:
    """An annotation of one instance."""
    return annotation([keypoints], status, [box])
