"""Predicting with a project's learned keypoint head (the part propagation needs).

Kept apart from :mod:`annotator.jobs.train` so that propagation, which training reuses for its
crops, does not import training back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from annotator.features.crop import CropRect, ImageCrop

if TYPE_CHECKING:
    from annotator.engine import Engine
    from annotator.matching.head import KeypointHead


#: below this many trained-on images the head is never used (measured on the DLC fixtures,
#: BENCHMARKS.md "Learning from corrections": from 3 images the head beats zero-shot transfer
#: from the same images on both sets, by 11-26 points; with 1 it is within a few points)
MIN_TRAINING_IMAGES = 3


class TrainingError(ValueError):
    """The project cannot train a head (no labelled instance, a pair-dependent fusion, ...)."""


def check_engine(engine: Engine) -> None:
    """Refuse pair-dependent fusions (copca): a head needs one descriptor per image. Decided
    from the configuration before the models load."""
    from annotator.features.extractor import pair_dependent

    if engine.loaded:
        per_pair = pair_dependent(engine.extractor)
    else:
        per_pair = getattr(engine.config, "fusion", "") == "copca"
    if per_pair:
        fusion = getattr(engine.config, "fusion", "?")
        raise TrainingError(f"the {fusion!r} fusion describes images per pair, so a keypoint "
                            "head cannot be trained on it; choose the dino or concat fusion")


def predict_in_box(head: KeypointHead, engine: Engine, image: np.ndarray,
                   box: tuple[float, float, float, float] | None, margin: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The head's prediction for one instance of ``image``: inside ``box`` (x, y, w, h)
    enlarged by ``margin`` (the crop rule of propagation and training), or the whole image
    (None). Returns points (K, 2) in image pixels (NaN where not found), confidence (K,) and
    found (K,): a point outside the crop is not found."""
    if box is None:
        points, conf = predict_with_head(head, engine, image)
        return points, conf, np.all(np.isfinite(points), axis=1)
    rect = CropRect.around(box, image.shape[1], image.shape[0], margin)
    points, conf = predict_with_head(head, engine, ImageCrop.of(image, rect))
    points = rect.to_image(points)
    found = rect.contains(points)
    points[~found] = np.nan
    return points, conf, found


def predict_with_head(head: KeypointHead, engine: Engine, image: Any
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(points (K, 2) in the pixels of ``image`` (an array or an ImageCrop), confidence (K,))
    through the engine's (cached) features."""
    from annotator.matching.head import cells_to_pixels, predict

    check_engine(engine)
    maps = engine.features(image)
    desc = engine.extractor.describe(maps)
    cells, conf = predict(head, desc)
    return cells_to_pixels(cells.numpy(), maps.letterbox, int(desc.shape[-1])), conf.numpy()
