"""Where the workplace's shared third-party fixtures live (``shared/fixtures``).

The folder sits beside the repository checkout (``<repo>/../shared/fixtures``); a clone made
elsewhere (a CI scratch folder) finds it through ``ANNOTATOR_SHARED_FIXTURES`` or the
workplace's fixed location. Tests that need a file fail, naming every place looked at, when
it is absent: they are never skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def candidates() -> list[Path]:
    """The folders searched, in order."""
    out = []
    env = os.environ.get("ANNOTATOR_SHARED_FIXTURES")
    if env:
        out.append(Path(env))
    out += [_REPO.parent / "shared" / "fixtures", Path("/work/shared/fixtures")]
    return out


def shared_fixture(*parts: str) -> Path:
    """The first existing ``<folder>/<parts>``; else the first candidate (tests then fail)."""
    for base in candidates():
        path = base.joinpath(*parts)
        if path.is_file():
            return path
    return candidates()[0].joinpath(*parts)


DIY_SC_CHECKPOINT = shared_fixture("diy-sc", "0300_dino_spair_best.pth")
