"""Feature extraction and propagation on a Ray cluster (Ray Data batch inference).

Needs the optional extra ``pip install "keypoint-annotator[cluster]"`` (``ray[data]``); this
module is the only one that imports Ray, and only the ``--ray`` paths of the CLI import it.

Pipeline: a Ray dataset of image paths, ``map_batches`` with a callable class that builds the
engine once per actor (models loaded in ``__init__``; one GPU per actor when the cluster has
GPUs; actor count = ``ClusterOptions.actors``), each batch handled by the same plain-Python
functions as a single-process run (:mod:`annotator.jobs.batch`). Extraction writes feature-cache
entries to the cache folder (a shared file-system path on a real cluster); propagation streams
predictions back to the driver. A failing image is an error entry; an actor that dies is
restarted by Ray and its batch retried (``max_restarts`` / ``max_task_retries``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import pickle
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotator.jobs.batch import (
    EngineFactory,
    ExtractOutcome,
    PreloadedLoader,
    extract_batch,
    load_references,
    propagate_batch,
)
from annotator.jobs.propagate import Prediction, PropagateRequest

log = logging.getLogger(__name__)

INSTALL_HINT = 'Ray is not installed: pip install "keypoint-annotator[cluster]"'


class ClusterError(RuntimeError):
    """Ray is missing or the cluster cannot be reached."""


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how to run. ``address``: ``local`` (start Ray on this machine with its CPUs
    and GPUs, or ``num_cpus``), ``auto`` (the running cluster) or ``ray://host:port``.
    ``gpus_per_actor`` None: 1 when the cluster has GPUs, else 0."""

    address: str = "local"
    actors: int = 1
    batch_size: int = 8
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    max_restarts: int = 3
    max_task_retries: int = 3
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ValueError("gpus per actor must be >= 0")
        if not (self.address in ("local", "auto") or self.address.startswith("ray://")
                or ":" in self.address):
            raise ValueError(f"Ray address must be local, auto or ray://host:port, got "
                             f"{self.address!r}")


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ClusterError(f"{INSTALL_HINT} ({exc})") from exc
    return ray


@contextlib.contextmanager
def connect(options: ClusterOptions) -> Iterator[Any]:
    """Ray connected to ``options.address`` for the block (an already initialised Ray is
    used as is and left running); yields the ``ray`` module."""
    ray = _ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"configure_logging": False}
        if options.address == "local":
            kwargs.update(address="local", include_dashboard=False)
            if options.num_cpus is not None:
                kwargs["num_cpus"] = options.num_cpus
        else:
            kwargs["address"] = options.address
        try:
            ray.init(**kwargs)
        except Exception as exc:  # ConnectionError, RuntimeError, ...: say which address
            raise ClusterError(f"cannot start or reach Ray at {options.address!r}: {exc}") \
                from exc
        started = True
    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # the driver draws its own bar
    try:
        yield ray
    finally:
        ctx.enable_progress_bars = bars
        if started:
            ray.shutdown()


def _dataset(ray: Any, rows: list[dict[str, Any]], batch_size: int) -> Any:
    """Dataset of ``rows`` in blocks of about one batch, so that every actor gets work."""
    blocks = max(1, math.ceil(len(rows) / batch_size))
    params = inspect.signature(ray.data.from_items).parameters
    key = "override_num_blocks" if "override_num_blocks" in params else "parallelism"
    return ray.data.from_items(rows, **{key: blocks})


def _map(ray: Any, ds: Any, worker: type, kwargs: Mapping[str, Any],
         options: ClusterOptions) -> Any:
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    with warnings.catch_warnings():  # newer Ray deprecates passing actor options as **kwargs
        warnings.simplefilter("ignore", DeprecationWarning)
        return ds.map_batches(
            worker, fn_constructor_kwargs=dict(kwargs), batch_size=options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=options.actors), batch_format="numpy",
            num_cpus=options.cpus_per_actor, num_gpus=gpus,
            max_restarts=options.max_restarts, max_task_retries=options.max_task_retries)


def _rows(ds: Any) -> Iterator[dict[str, Any]]:
    """Output rows streamed to the driver as the batches finish."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        cols = list(batch)
        for i in range(len(batch[cols[0]])):
            yield {c: batch[c][i] for c in cols}


def _text(values: Any) -> list[str]:
    return [str(v) for v in values]


class ExtractWorker:
    """Ray Data callable class: one engine per actor, fills the cache for each batch."""

    def __init__(self, engine_factory: EngineFactory, image_root: str) -> None:
        self.engine = engine_factory()
        self.engine.extractor  # noqa: B018 (load the models once, here)
        self.image_root = image_root

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outcomes = extract_batch(_text(batch["path"]), self.image_root, self.engine)
        return {"path": np.array([o.path for o in outcomes], dtype=object),
                "status": np.array([o.status for o in outcomes], dtype=object),
                "error": np.array([o.error or "" for o in outcomes], dtype=object)}


class PropagateWorker:
    """Ray Data callable class: one engine per actor; the reference images and points travel
    with the task; each batch of targets returns pickled predictions."""

    def __init__(self, engine_factory: EngineFactory, request: PropagateRequest,
                 references: Mapping[str, np.ndarray]) -> None:
        self.engine = engine_factory()
        self.request = request
        self.loader = PreloadedLoader(references)
        for image in references.values():  # reference features: once per actor (or cache)
            self.engine.features(image)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        preds = propagate_batch(self.request, _text(batch["path"]), self.engine, self.loader)
        return {"path": np.array([p.path for p in preds], dtype=object),
                "payload": np.array([pickle.dumps(p) for p in preds], dtype=object)}


def run_extract(paths: Sequence[str], image_root: str, engine_factory: EngineFactory,
                options: ClusterOptions) -> Iterator[ExtractOutcome]:
    """Outcome per image as actors finish batches (any order); ``engine_factory`` must be
    picklable (a module-level function or a functools.partial of one)."""
    if not paths:
        return
    with connect(options) as ray:
        ds = _dataset(ray, [{"path": p} for p in paths], options.batch_size)
        out = _map(ray, ds, ExtractWorker, {"engine_factory": engine_factory,
                                            "image_root": image_root}, options)
        for row in _rows(out):
            yield ExtractOutcome(str(row["path"]), str(row["status"]), str(row["error"]) or None)


def run_propagate(request: PropagateRequest, engine_factory: EngineFactory,
                  options: ClusterOptions) -> Iterator[Prediction]:
    """Predictions for ``request.targets`` as actors finish batches (any order). The driver
    reads the reference images once and broadcasts them; raises ValueError when there is no
    usable reference."""
    if not request.references:
        raise ValueError("no reference image: label at least one image first")
    references = load_references(request)
    if not request.targets:
        return
    with connect(options) as ray:
        ds = _dataset(ray, [{"path": p} for p in request.targets], options.batch_size)
        out = _map(ray, ds, PropagateWorker, {"engine_factory": engine_factory,
                                              "request": request, "references": references},
                   options)
        for row in _rows(out):
            yield pickle.loads(row["payload"])


@dataclass(frozen=True)
class PairOutcome:
    """One evaluated pair: its position in the run, its score, or the error that stopped it."""

    index: int
    pair_id: str
    score: Any = None  # annotator.jobs.pck.PairScore
    error: str | None = None


class EvalWorker:
    """Ray Data callable class: one engine per actor; each row carries a pickled, loaded pair
    (paths and keypoints; the images load on the actor)."""

    def __init__(self, engine_factory: EngineFactory, alphas: tuple[float, ...],
                 rule: str) -> None:
        from annotator.jobs.evaluate import _ImageCache, engine_predictor

        self.predictor = engine_predictor(engine_factory())
        self.alphas, self.rule = alphas, rule
        self.images = _ImageCache(8)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from annotator.jobs.evaluate import score_sample

        out = []
        for index, blob in zip(batch["index"], batch["sample"]):
            sample = pickle.loads(blob)
            try:
                score = score_sample(sample, self.predictor, self.alphas, self.rule,
                                     self.images)
                out.append(PairOutcome(int(index), str(sample.pair_id), score))
            except Exception as exc:
                log.warning("pair %s: %s", sample.pair_id, exc)
                out.append(PairOutcome(int(index), str(sample.pair_id),
                                       error=f"{type(exc).__name__}: {exc}"))
        return {"payload": np.array([pickle.dumps(o) for o in out], dtype=object)}


def run_eval(samples: Sequence[Any], engine_factory: EngineFactory, alphas: tuple[float, ...],
             rule: str, options: ClusterOptions) -> Iterator[PairOutcome]:
    """Score loaded pairs (:class:`~annotator.io.datasets.PairSample`) on the actors, at
    ``alphas``; outcomes stream back as batches finish (any order)."""
    if not samples:
        return
    with connect(options) as ray:
        rows = [{"index": i, "sample": pickle.dumps(s)} for i, s in enumerate(samples)]
        ds = _dataset(ray, rows, options.batch_size)
        out = _map(ray, ds, EvalWorker, {"engine_factory": engine_factory,
                                         "alphas": tuple(alphas), "rule": rule}, options)
        for row in _rows(out):
            yield pickle.loads(row["payload"])
