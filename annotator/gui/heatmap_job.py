"""Similarity heatmap for the worker thread (imports the engine stack; never on the GUI thread).

The engine gives a (G, G) map over the target's letterbox canvas; this crops it to the image
area so the GUI can stretch it over the image as it is shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from annotator.gui.requests import HeatmapOrder
from annotator.io.images import load_image, resolve_image_path


def crop_to_image(heat: np.ndarray, letterbox: Any) -> np.ndarray:
    """The part of a canvas-wide (G, G) map that covers the original image, upsampled."""
    canvas = int(letterbox.canvas)
    full = cv2.resize(np.asarray(heat, np.float32), (canvas, canvas),
                      interpolation=cv2.INTER_LINEAR)
    x0, y0 = int(letterbox.offset_x), int(letterbox.offset_y)
    out = full[y0 : y0 + int(letterbox.content_h), x0 : x0 + int(letterbox.content_w)]
    return np.ascontiguousarray(out)


def similarity_map(engine: Any, order: HeatmapOrder) -> np.ndarray:
    """Heatmap of ``order.point`` on ``order.reference`` over ``order.target`` (image area)."""
    root = Path(order.image_root)
    load = order.source or load_image
    ref = load(resolve_image_path(root, order.reference))
    tgt = load(resolve_image_path(root, order.target))
    heat = engine.similarity_heatmap(ref, np.asarray(order.point, np.float64), tgt)
    letterbox = engine.features(tgt).letterbox
    return crop_to_image(np.asarray(heat), letterbox)
