"""The feature cache's folder layout, without torch (the settings dialog checks a folder).

The cache owns a folder it marks with :data:`MARKER_NAME`; entries live at
``<folder>/<k[:2]>/<k>.safetensors`` (``k`` 64 hex digits), temporary files at
``<folder>/<k[:2]>/.<k>.<random>.kpc-tmp``. Nothing else is ever touched.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MARKER_NAME = ".keypoint-annotator-feature-cache"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
SHARD = re.compile(r"^[0-9a-f]{2}$")
ENTRY = re.compile(r"^([0-9a-f]{64})\.safetensors$")
TMP = re.compile(r"^\.[0-9a-f]{64}\.[A-Za-z0-9_]+\.kpc-tmp$")


def is_cache_entry(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has the exact name and place of an entry the cache writes."""
    p = Path(path)
    m = ENTRY.match(p.name)
    return bool(m) and p.parent.name == m.group(1)[:2]


def foreign_content(folder: str | os.PathLike[str]) -> str | None:
    """The first name in an unmarked ``folder`` that is not of the cache's layout, or None
    (also None for a missing or empty folder)."""
    folder = Path(folder)
    if not folder.exists():
        return None
    if not folder.is_dir():
        return f"{folder.name} is a file"
    try:
        with os.scandir(folder) as top:
            for shard in top:
                if not (SHARD.match(shard.name) and shard.is_dir(follow_symlinks=False)):
                    return shard.name
                with os.scandir(shard.path) as inner:
                    for f in inner:
                        ok = f.is_file(follow_symlinks=False) and (
                            is_cache_entry(f.path) or TMP.match(f.name))
                        if not ok:
                            return f"{shard.name}/{f.name}"
    except OSError as exc:
        return f"unreadable: {exc}"
    return None


def cache_folder_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why ``folder`` cannot be the feature cache folder, or None when it can (it is ours,
    new, empty, or holds only entries of our layout)."""
    folder = Path(folder)
    if (folder / MARKER_NAME).is_file():
        return None
    foreign = foreign_content(folder)
    if foreign is None:
        return None
    return (f"feature cache folder {folder} holds other files ({foreign}); the cache only "
            f"uses a new or empty folder (it marks it with {MARKER_NAME}). Choose another "
            "folder.")
