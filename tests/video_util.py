"""Small synthetic videos for the video tests (written with OpenCV's MPEG-4 encoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.shared_fixtures import shared_fixture

OPENFIELD_VIDEO = shared_fixture("dlc-examples", "openfield-Pranav-2018-10-30", "videos",
                                 "m3v1mp4.mp4")


def synthetic_frame(i: int, scenes: int = 1, n: int = 90, w: int = 64,
                    h: int = 48) -> np.ndarray:
    """BGR frame ``i``: a scene colour (``scenes`` equal runs) with a square moving right."""
    scene = i * scenes // n
    img = np.zeros((h, w, 3), np.uint8)
    level = (20 + 100 * scene) % 256
    img[:] = (level, level // 2, 255 - level)
    x = (i * 3) % (w - 8)
    img[18:26, x:x + 8] = (level + 128) % 256
    return img


def write_video(path: Path, n: int = 90, scenes: int = 1, fps: float = 25.0,
                w: int = 64, h: int = 48) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for i in range(n):
        writer.write(synthetic_frame(i, scenes, n, w, h))
    writer.release()
    return path
