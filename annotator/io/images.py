"""The one image loader of the app: any common format to RGB uint8, EXIF orientation applied."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from annotator.domain.paths import normalize_relpath

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
)
MAX_PIXELS = 178_956_970  # same order as Pillow's own bomb limit (about 13,000 x 13,000)


class ImageLoadError(ValueError):
    """An image file cannot be read; the message names the file and the reason."""


def _open(path: Path, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # our own limit below decides; Pillow still refuses beyond twice its own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        w, h = img.size
        if w * h > max_pixels:
            img.close()
            raise ImageLoadError(
                f"{path}: {w} x {h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
                "(decompression-bomb guard)"
            )
        return img
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image or an unsupported format") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{path}: too large (decompression-bomb guard): {exc}") from None
    except OSError as exc:
        raise ImageLoadError(f"{path}: cannot be read ({exc})") from None


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        gray = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB")).copy()
    return np.asarray(img.convert("RGB")).copy()


def load_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Load ``path`` as an RGB uint8 array of shape (H, W, 3) in display orientation.

    EXIF orientation is applied; 16-bit, grayscale, palette and alpha images become RGB
    (alpha composited on white). Raises :class:`ImageLoadError` naming the file otherwise.
    """
    path = Path(path)
    img = _open(path, max_pixels)
    try:
        with img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb_uint8(img)
    except ImageLoadError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(f"{path}: corrupt or truncated image ({exc})") from None


def read_size(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) in display orientation, read from the header only."""
    path = Path(path)
    img = _open(path, max_pixels)
    with img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # malformed EXIF: treat as upright
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_thumbnail(path: str | os.PathLike[str], max_side: int = 160) -> np.ndarray:
    """A small RGB uint8 (h, w, 3) preview whose longer side is at most ``max_side``."""
    if max_side < 1:
        raise ValueError("thumbnail size must be positive")
    path = Path(path)
    img = _open(path, MAX_PIXELS)
    try:
        with img:
            img.draft("RGB", (max_side * 2, max_side * 2))  # fast JPEG downscale on decode
            img.load()
            img = ImageOps.exif_transpose(img)
            img.thumbnail((max_side, max_side))
            return _to_rgb_uint8(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(f"{path}: corrupt or truncated image ({exc})") from None


def list_images(root: str | os.PathLike[str]) -> list[str]:
    """Image files under ``root`` (recursive) as sorted relative POSIX paths."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                out.append(normalize_relpath(rel.replace(os.sep, "/")))
    return sorted(out)


def resolve_image_path(root: str | os.PathLike[str], relpath: str) -> Path:
    """Absolute path of ``relpath`` under ``root``; rejects paths escaping the root."""
    rel = normalize_relpath(relpath)
    root_path = Path(root).resolve()
    full = (root_path / rel).resolve()
    if full != root_path and root_path not in full.parents:
        raise ValueError(f"image path {relpath!r} resolves outside the image root {root_path}")
    return full
