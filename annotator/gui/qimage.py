"""Conversions between numpy arrays and Qt images (safe on any thread: QImage only)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PySide6.QtGui import QImage

from annotator.io.images import ImageLoadError


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """A deep-copied QImage of an (H, W, 3) uint8 RGB array."""
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got shape {arr.shape}")
    h, w, _ = arr.shape
    image = QImage(arr.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return image.copy()  # own the pixels: the array may be freed


def heatmap_to_qimage(heat: np.ndarray, alpha: float = 0.55) -> QImage:
    """An RGBA overlay of a 2-D map normalised to [0, 1]: transparent blue to opaque red."""
    h = np.asarray(heat, dtype=np.float32)
    if h.ndim != 2:
        raise ValueError(f"expected a 2-D heatmap, got shape {h.shape}")
    lo, hi = float(np.nanmin(h)), float(np.nanmax(h))
    t = np.zeros_like(h) if hi <= lo else (h - lo) / (hi - lo)
    t = np.nan_to_num(t, nan=0.0) ** 2
    rgba = np.empty(h.shape + (4,), dtype=np.uint8)
    rgba[..., 0] = np.clip(255 * np.minimum(1.0, 2 * t), 0, 255)
    rgba[..., 1] = np.clip(255 * (1 - np.abs(2 * t - 1)), 0, 255)
    rgba[..., 2] = np.clip(255 * np.maximum(0.0, 1 - 2 * t), 0, 255)
    rgba[..., 3] = np.clip(255 * alpha * t * t, 0, 255)  # only the strong matches stand out
    rgba = np.ascontiguousarray(rgba)
    hh, ww = h.shape
    return QImage(rgba.data, ww, hh, 4 * ww, QImage.Format.Format_RGBA8888).copy()


def decode_and_emit(
    emit: Callable[..., None], generation: int, path: str, load: Callable[[], np.ndarray]
) -> None:
    """Pool-thread body: ``load()`` an RGB array, turn it into a QImage that owns its pixels
    (QImage is thread-safe) and ``emit(generation, path, image or None, error)``; never lets
    an exception kill the pool thread silently."""
    try:
        img: QImage | None = rgb_to_qimage(load())
        err = ""
    except ImageLoadError as exc:
        img, err = None, str(exc)
    except Exception as exc:  # noqa: BLE001
        img, err = None, f"{type(exc).__name__}: {exc}"
    emit(generation, path, img, err)
