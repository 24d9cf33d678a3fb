"""One reference to several targets at once on the parts fast path ("concat", "sd", "dino"), and
an ordered background prefetch to overlap reading targets with matching.

``transfer_parts_batch(ref, [t1, ..., tB], ...)`` returns exactly what B calls of
``transfer_parts(ref, t_b, ...)`` return, with the work that does not depend on the target done
once per batch:

- the query cells (and mirrored cells) are computed once (``transfer_with``'s own code, recorded
  on a first pass);
- the forward similarities are each target's own (``PartsDescriptor.similarity``, the same call
  as ``transfer_parts``: bitwise identical);
- the cycle check matches the B * K best target vectors back against the reference in one matmul
  per layer (the reference's layers are read once per batch instead of once per target). This
  only changes the summation order of the back similarities (float32 rounding, ~1e-7); the
  cycle's argmax can only differ where two reference cells tie to that precision.

Hard argmax, soft-argmax, cycle error, confidence, the flip choice and the result are
``annotator.matching.transfer``'s own code.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

import numpy as np
import torch

from annotator.features.letterbox import Letterbox
from annotator.matching.transfer import (
    MatchParams,
    TransferResult,
    _Raw,
    match_similarity,
    transfer_with,
)
from annotator.matching.transfer_parts import PartsDescriptor, PartsReference

T = TypeVar("T")
R = TypeVar("R")


def transfer_parts_batch(ref: PartsReference, targets: Sequence[PartsDescriptor],
                         ref_points: np.ndarray, ref_letterbox: Letterbox,
                         tgt_letterboxes: Sequence[Letterbox], params: MatchParams | None = None,
                         ref_valid: np.ndarray | None = None,
                         flipped_ref: PartsReference | None = None,
                         flip_perm: Sequence[int] | np.ndarray | None = None
                         ) -> list[TransferResult]:
    """``[transfer_parts(ref, t, ref_points, ref_letterbox, lb, ...) for t, lb in zip(targets,
    tgt_letterboxes)]`` with the cycle check of all targets batched (see the module docstring).
    An empty ``targets`` gives an empty list."""
    params = params or MatchParams()
    targets = list(targets)
    if len(tgt_letterboxes) != len(targets):
        raise ValueError(f"{len(targets)} targets but {len(tgt_letterboxes)} letterboxes")
    if not targets:
        return []
    g = ref.grid
    for t in targets:
        if t.grid != g or t.channels != ref.parts.channels:
            raise ValueError("reference and target descriptors differ in shape")
    if flipped_ref is not None and flipped_ref.flat.shape != ref.flat.shape:
        raise ValueError("flipped_ref must have the shape of ref")
    flip = flipped_ref is not None

    # 1) the query cells: transfer_with's own computation, recorded (they depend on the
    #    reference only); the recording pass returns placeholders
    recorded: dict[bool, tuple[np.ndarray, float]] = {}

    def record(cells: np.ndarray, cell: float, flipped: bool) -> _Raw:
        recorded[flipped] = (cells.copy(), cell)
        k = len(cells)
        return _Raw(np.zeros((k, 2)), np.zeros(k), np.zeros(k))

    first = transfer_with(record, g, ref_points, ref_letterbox, tgt_letterboxes[0], params,
                          ref_valid, flip, flip_perm)
    if len(first) == 0:
        return [TransferResult.empty() for _ in targets]

    # 2) per direction: every target's forward similarity, then one batched matching back
    k = len(recorded[False][0])
    sims: dict[bool, list[torch.Tensor]] = {}
    backs: dict[bool, torch.Tensor] = {}
    for flipped, (cells, _) in recorded.items():
        r = flipped_ref if flipped else ref
        assert r is not None
        qidx = torch.from_numpy(cells[:, 1] * g + cells[:, 0])
        q = r.flat[qidx]
        sims[flipped] = [t.similarity(q) for t in targets]  # (K, N) each, as transfer_parts
        vecs = torch.cat([t.vectors(s.argmax(dim=1))
                          for t, s in zip(targets, sims[flipped])])  # (B*K, C)
        backs[flipped] = r.parts.similarity(vecs)  # (B*K, N)

    # 3) per target: transfer_with on the precomputed similarities
    out = []
    for b, lb in enumerate(tgt_letterboxes):
        def match(cells: np.ndarray, cell: float, flipped: bool, b: int = b) -> _Raw:
            want, _ = recorded[flipped]
            if not np.array_equal(cells, want):  # pragma: no cover - same code, same inputs
                raise AssertionError("query cells differ from the recorded ones")
            qidx = torch.from_numpy(cells[:, 1] * g + cells[:, 0])
            back = backs[flipped][b * k:(b + 1) * k]
            return match_similarity(sims[flipped][b], lambda best: back, qidx, g, cell, params)

        out.append(transfer_with(match, g, ref_points, ref_letterbox, lb, params, ref_valid,
                                 flip, flip_perm))
    return out


# ---- ordered prefetch ----------------------------------------------------------------------
_DONE = object()


class Prefetch(Generic[T, R]):
    """Iterate ``fn(item)`` for ``items`` in order, computed ``depth`` items ahead in one
    background thread (``items`` is consumed in that thread too). An exception from ``items`` or
    ``fn`` is raised by the consumer at its place in the order. ``close()`` (also on exit of a
    ``with`` block, or when the consumer's generator is closed) stops the thread and waits for
    the item it is working on.

    ``ready()`` returns how many results can be taken without waiting."""

    def __init__(self, items: Iterable[T], fn: Callable[[T], R], depth: int = 4) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._q: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._items, self._fn = items, fn
        self._thread = threading.Thread(target=self._run, name="annotator-prefetch", daemon=True)
        self._finished = False
        self._thread.start()

    def _put(self, entry: tuple[bool, object]) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                if not self._put((True, self._fn(item))):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put((False, exc))
            return
        self._put((True, _DONE))

    def ready(self) -> int:
        return self._q.qsize()

    def __iter__(self) -> Iterator[R]:
        return self

    def __next__(self) -> R:
        if self._finished:
            raise StopIteration
        ok, value = self._q.get()
        if not ok:
            self._finished = True
            self.close()
            raise value  # type: ignore[misc]
        if value is _DONE:
            self._finished = True
            self._thread.join()
            raise StopIteration
        return value  # type: ignore[return-value]

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a put waiting on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> Prefetch[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

