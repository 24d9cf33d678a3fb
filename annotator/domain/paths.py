"""Image paths relative to the image root (pure string logic, POSIX separators)."""

from __future__ import annotations

import posixpath
import re


class PathEscapeError(ValueError):
    """A path is absolute or would leave the image root."""


_DRIVE = re.compile(r"^[A-Za-z]:")
# a path that is normal already: relative, no drive, components neither empty nor "." nor
# "..", no backslash or NUL (one C-level match: a project of 10^5 images is loaded faster)
_NORMAL = re.compile(r"(?!/|[A-Za-z]:)(?:(?!\.\.?/)[^/\\\x00]+/)*(?!\.\.?$)[^/\\\x00]+")


def is_normal_relpath(path: object) -> bool:
    """Whether ``path`` is a str that :func:`normalize_relpath` returns unchanged (one
    C-level regex match)."""
    return type(path) is str and _NORMAL.fullmatch(path) is not None and not path.isspace()


def normalize_relpath(path: str) -> str:
    """Normalise ``path`` to a POSIX path relative to the image root.

    Raises :class:`PathEscapeError` for absolute paths, drive letters, empty paths and paths
    whose ``..`` components leave the root.
    """
    if is_normal_relpath(path):
        return path
    if not isinstance(path, str) or not path.strip():
        raise PathEscapeError(f"image path {path!r} is empty")
    if "\x00" in path:
        raise PathEscapeError(f"image path {path!r} contains a NUL byte")
    p = path.replace("\\", "/")
    if p.startswith("/") or _DRIVE.match(p):
        raise PathEscapeError(f"image path {path!r} is absolute; it must be relative to the root")
    norm = posixpath.normpath(p)
    if norm == "." or norm == ".." or norm.startswith("../"):
        raise PathEscapeError(f"image path {path!r} escapes the image root")
    return norm
