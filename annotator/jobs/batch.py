"""Batch work shared by the single-process and the Ray runs (plain Python, no Ray).

A batch is a list of image paths (relative to an image root). :func:`extract_batch` fills the
feature cache for them; :func:`propagate_batch` predicts them from the references of a
:class:`~annotator.jobs.propagate.PropagateRequest`. Both always return one outcome per path,
in order: a failing image becomes an error entry naming the reason, the others go on.
``annotator.jobs.cluster`` runs these same functions inside Ray actors, so a cluster run uses
the same engine code and the same cache keys as a run on one machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from annotator.io.images import ImageLoadError, load_image, resolve_image_path
from annotator.jobs.images import ImageLoader
from annotator.jobs.progress import Cancelled, TaskState
from annotator.jobs.propagate import Prediction, PropagateRequest, run_propagation

if TYPE_CHECKING:
    from annotator.engine import Engine

log = logging.getLogger(__name__)

EngineFactory = Callable[[], "Engine"]

COMPUTED, CACHED, FAILED = "computed", "cached", "error"


@dataclass(frozen=True)
class ExtractOutcome:
    """What happened to one image: ``status`` is computed, cached or error (with ``error``)."""

    path: str
    status: str
    error: str | None = None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def extract_batch(paths: Sequence[str], image_root: str, engine: Engine,
                  loader: ImageLoader = load_image) -> list[ExtractOutcome]:
    """Make sure the cache holds the features of every image of ``paths``.

    Entries already in the cache are not recomputed (an interrupted run started again only
    does the rest); the misses are extracted together, and if that fails, one at a time so
    that only the failing image is reported."""
    cache = engine.cache
    if cache is None:
        raise ValueError("extracting features needs a feature cache")
    fingerprint = engine.fingerprint
    out: dict[int, ExtractOutcome] = {}
    todo: list[tuple[int, np.ndarray]] = []
    for i, path in enumerate(paths):
        try:
            image = loader(resolve_image_path(image_root, path))
        except (ImageLoadError, ValueError, OSError) as exc:
            out[i] = ExtractOutcome(path, FAILED, _reason(exc))
            continue
        if cache.get(cache.key(image, fingerprint)) is not None:
            out[i] = ExtractOutcome(path, CACHED)
        else:
            todo.append((i, image))
    if todo:
        try:
            engine.features_many([image for _, image in todo])
            out.update((i, ExtractOutcome(paths[i], COMPUTED)) for i, _ in todo)
        except Exception as exc:  # find the failing image(s): one at a time
            if len(todo) == 1:
                i = todo[0][0]
                out[i] = ExtractOutcome(paths[i], FAILED, _reason(exc))
            else:
                log.warning("batch of %d images failed (%s): retrying one at a time",
                            len(todo), exc)
                for i, image in todo:
                    try:
                        engine.features(image)
                        out[i] = ExtractOutcome(paths[i], COMPUTED)
                    except Exception as one:
                        out[i] = ExtractOutcome(paths[i], FAILED, _reason(one))
    for outcome in out.values():
        if outcome.status == FAILED:
            log.warning("%s: %s", outcome.path, outcome.error)
    return [out[i] for i in range(len(paths))]


class PreloadedLoader:
    """Image loader that returns arrays it was given (the references, broadcast with the
    task) and loads every other path with ``fallback``."""

    def __init__(self, images: Mapping[str, np.ndarray],
                 fallback: ImageLoader = load_image) -> None:
        self.images = {str(Path(k)): v for k, v in images.items()}
        self.fallback = fallback

    def __call__(self, path: Path) -> np.ndarray:
        image = self.images.get(str(Path(path)))
        return image if image is not None else self.fallback(path)


def load_references(request: PropagateRequest,
                    loader: ImageLoader = load_image) -> dict[str, np.ndarray]:
    """The readable reference images of ``request`` by absolute path (small: they travel
    with the task). Raises ValueError when none can be read."""
    out = {}
    for spec in request.references:
        path = resolve_image_path(request.image_root, spec.path)
        try:
            out[str(path)] = loader(path)
        except (ImageLoadError, ValueError, OSError) as exc:
            log.warning("reference %s skipped: %s", spec.path, exc)
    if request.references and not out:
        raise ValueError("none of the reference images can be read")
    return out


def _run(request: PropagateRequest, targets: Sequence[str], engine: Engine,
         loader: ImageLoader) -> list[Prediction]:
    return list(run_propagation(replace(request, targets=tuple(targets)), engine, TaskState(),
                                loader))


def propagate_batch(request: PropagateRequest, paths: Sequence[str], engine: Engine,
                    loader: ImageLoader = load_image) -> list[Prediction]:
    """Predictions for ``paths`` (targets of ``request``), grouped by path in order, through
    :func:`annotator.jobs.propagate.run_propagation`. If the batch fails, its images are run
    one at a time and only the failing one becomes an error prediction."""
    try:
        preds = _run(request, paths, engine, loader)
    except Cancelled:
        raise
    except Exception as exc:
        if len(paths) == 1:
            return [Prediction(paths[0], error=_reason(exc))]
        log.warning("batch of %d targets failed (%s): retrying one at a time", len(paths), exc)
        preds = []
        for path in paths:
            try:
                preds += _run(request, [path], engine, loader)
            except Cancelled:
                raise
            except Exception as one:
                log.warning("%s: %s", path, one)
                preds.append(Prediction(path, error=_reason(one)))
    by_path: dict[str, list[Prediction]] = {}
    for pred in preds:  # several per path when a job predicts instance by instance
        by_path.setdefault(pred.path, []).append(pred)
    return [pred for path in paths
            for pred in by_path.get(path) or [Prediction(path, error="no prediction returned")]]


def batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    """``items`` in consecutive chunks of ``size`` (>= 1)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield list(items[start:start + size])
