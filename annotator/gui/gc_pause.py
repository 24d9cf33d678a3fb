"""Pause the cyclic garbage collector while a worker thread allocates a lot.

A collection runs on whichever thread happens to allocate and holds the GIL throughout. With
the loaded project frozen (:func:`gc.freeze`), the oldest generation is small, so an export
that makes 10^5 objects (sleap-io's instances and points, a DeepLabCut table) triggers a full
collection every few hundred milliseconds, each one walking everything the export has made so
far: measured at 10,000 x 3, SLEAP export, 41 -> 155 ms per collection, each one a GUI stall
of the same length. Reference counting still frees everything without cycles meanwhile.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: a project at least this big: what is made for it on a worker thread (its load's gallery
#: rows, a run's snapshot) is frozen once made
FREEZE_IMAGES = 2000

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collector off for the block (nestable, from any thread); back as it was after the
    last one leaves."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()


def freeze_made(images: int) -> bool:
    """After a job made its copies of a project of ``images`` (a run's snapshot: the
    annotations copied, the image list, the run's baseline), move everything made so far out
    of the collector's sight (:func:`gc.freeze`, O(1)) when ``images`` >= :data:`FREEZE_IMAGES`.
    Otherwise the next young collection walks those 10^5-entry copies holding the GIL (31 ms
    at 100,000 images, on whichever thread allocates: a GUI stall), and every older one
    again while the run lasts. They are freed by reference counting when the run ends (the
    domain holds no cycles); cyclic garbage made before the call is never collected (as
    after a load). Returns whether it froze."""
    if images < FREEZE_IMAGES:
        return False
    gc.freeze()
    return True


@contextmanager
def made_and_frozen(images: int) -> Iterator[None]:
    """The block with the collector paused (:func:`gc_paused`: no collection walks the
    copies half made), then :func:`freeze_made` for a project of ``images``: for a job
    that copies a big project (a load's gallery rows, a run's snapshot and request)."""
    with gc_paused():
        yield
        freeze_made(images)
