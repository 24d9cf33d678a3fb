"""Helpers of the reliability suite: tiny tmpfs mounts for full and read-only folders."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(size: str = "256k") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` (root only); skips the test, with the reason, otherwise."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("a full / read-only folder needs a tmpfs mount, which needs root")
    where = Path(tempfile.mkdtemp(prefix="kp-tmpfs-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        with contextlib.suppress(OSError):
            where.rmdir()


def remount_readonly(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)


def fill(where: Path) -> None:
    """Fill the filesystem at ``where`` to the last byte."""
    f = open(where / "filler", "wb", buffering=0)  # noqa: SIM115
    try:
        while True:
            f.write(b"\0" * 4096)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        f.close()
