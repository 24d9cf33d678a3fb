"""The one image loader of the app: any common format to RGB uint8, EXIF orientation applied."""

from __future__ import annotations

import errno
import logging
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from annotator.domain.paths import normalize_relpath
from annotator.io.gil_steps import sorted_in_steps

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
)
MAX_PIXELS = 178_956_970  # same order as Pillow's own bomb limit (about 13,000 x 13,000)
# decoded size estimate: the decoded image plus our RGB copy (the GUI decodes on 3 threads)
MAX_DECODE_BYTES = 768 << 20
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3,
                    "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4,
                    "F": 4, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


class ImageLoadError(ValueError):
    """An image file cannot be read; the message names the file and the reason."""


def _check_regular(path: Path) -> None:
    """Refuse anything but a regular file (after symlinks) without opening it: a FIFO would
    block forever, a device could be endless. The messages name ``path`` as listed."""
    try:
        st = os.stat(path)  # follows symlinks; a loop raises ELOOP
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageLoadError(f"{path}: broken symbolic link (its target "
                                 f"{os.readlink(path)!r} does not exist)") from None
        raise ImageLoadError(f"{path}: file not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageLoadError(f"{path}: symbolic link loop") from None
        raise ImageLoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(f"{path}: is a folder, not an image")
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(f"{path}: not a regular file (a FIFO, socket or device); "
                             "not opened")


def decode_bytes_estimate(img: Image.Image) -> int:
    """Bytes to decode ``img`` and convert it to RGB (the decoded image plus our copy)."""
    w, h = img.size
    return w * h * (_BYTES_PER_PIXEL.get(img.mode, 4) + 3)


def _open(path: Path, max_pixels: int, max_bytes: int = MAX_DECODE_BYTES) -> Image.Image:
    _check_regular(path)
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
        need = decode_bytes_estimate(img)
        if need > max_bytes:
            img.close()
            raise ImageLoadError(
                f"{path}: {w} x {h} {img.mode} needs about {need / 2**20:,.0f} MiB to decode, "
                f"over the limit of {max_bytes / 2**20:,.0f} MiB (decompression-bomb guard)")
        return img
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image or an unsupported format") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{path}: too large (decompression-bomb guard): {exc}") from None
    except ImageLoadError:
        raise
    except OSError as exc:
        raise ImageLoadError(f"{path}: cannot be read ({exc})") from None
    except ValueError as exc:  # PNG zTXt/iCCP/iTXt bombs: "Decompressed Data Too Large"
        raise ImageLoadError(f"{path}: refused ({exc}; compressed text/profile bomb guard)"
                             ) from None
    except Exception as exc:  # any other decoder failure, named
        raise ImageLoadError(f"{path}: corrupt image ({type(exc).__name__}: {exc})") from None


def _gray_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale one-channel integer or float data to 0..255: integer data by its bit depth
    (8, 10, 12, 14 or 16 bits: 12-bit data in a 16-bit PNG is not black), float data in
    [0, 1] or [0, 255] as is, anything else (int32, signed, HDR floats) by its own range."""
    a = np.asarray(arr)
    finite = np.isfinite(a) if a.dtype.kind == "f" else None
    vals = a[finite] if finite is not None else a
    lo = float(vals.min()) if vals.size else 0.0
    hi = float(vals.max()) if vals.size else 0.0
    top = None
    if lo >= 0:
        if a.dtype.kind == "f":
            top = 1.0 if hi <= 1.0 else (255.0 if hi <= 255.0 else None)
        else:
            top = next((float(2**b - 1) for b in (8, 10, 12, 14, 16) if hi <= 2**b - 1), None)
    out = a.astype(np.float32)
    if top is None:  # own range
        out = (out - lo) / max(hi - lo, 1e-12) * 255.0
    else:
        out = out * np.float32(255.0 / top)
    if finite is not None:
        out[~finite] = 0.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N", "F"):
        gray = _gray_to_uint8(np.asarray(img))
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
    with _decode_errors(path), img:
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb_uint8(img)


@contextmanager
def _decode_errors(path: Path) -> Iterator[None]:
    """Decoding failures as an :class:`ImageLoadError` naming ``path``."""
    try:
        yield
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageLoadError(f"{path}: not enough memory to decode") from None
    except Exception as exc:  # OSError, ValueError, SyntaxError, struct.error, ...
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
    with _decode_errors(path), img:
        img.draft("RGB", (max_side * 2, max_side * 2))  # fast JPEG downscale on decode
        img.load()
        img = ImageOps.exif_transpose(img)
        img.thumbnail((max_side, max_side))
        return _to_rgb_uint8(img)


def list_images(root: str | os.PathLike[str]) -> list[str]:
    """Image files under ``root`` (recursive) as sorted relative POSIX paths."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):  # symlinked folders are not walked
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                full = os.path.join(dirpath, name)
                try:
                    mode = os.lstat(full).st_mode
                except OSError:
                    continue
                if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                    log.warning("%s skipped: not a regular file (a FIFO, socket or device)",
                                full)
                    continue  # links are kept: a broken one is reported when loaded
                rel = os.path.relpath(full, root)
                out.append(normalize_relpath(rel.replace(os.sep, "/")))
    return sorted_in_steps(out)  # often on a loader thread: the GUI thread keeps the GIL


def resolve_image_path(root: str | os.PathLike[str], relpath: str) -> Path:
    """Absolute path of ``relpath`` under ``root``, symlinks resolved once (a loop does not
    raise here); rejects paths escaping the root. A broken or looping link comes back as
    listed, so that loading it names the listed file and the problem."""
    rel = normalize_relpath(relpath)
    root_path = Path(os.path.realpath(root))
    listed = root_path / rel
    full = Path(os.path.realpath(listed))
    if full != root_path and root_path not in full.parents:
        raise ValueError(f"image path {relpath!r} resolves outside the image root {root_path}")
    return full if os.path.exists(full) else listed


def load_listed(root: str | os.PathLike[str], relpath: str,
                max_side: int | None = None) -> np.ndarray:
    """:func:`load_image` (or :func:`load_thumbnail` with ``max_side``) of a listed image,
    through :func:`resolve_image_path`; every failure is an :class:`ImageLoadError` that
    names ``relpath``."""
    try:
        full = resolve_image_path(root, relpath)
        return load_image(full) if max_side is None else load_thumbnail(full, max_side)
    except ImageLoadError as exc:
        msg = str(exc)
        raise ImageLoadError(msg if relpath in msg else f"{relpath}: {msg}") from None
    except ValueError as exc:
        raise ImageLoadError(str(exc)) from None
