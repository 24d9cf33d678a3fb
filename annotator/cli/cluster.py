"""``--ray`` options shared by extract, propagate and eval, and the driver's progress bar."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster (needs the [cluster] extra: Ray)")
    g.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run on Ray: local (start Ray on this machine), auto (the running "
                        "cluster) or ray://host:port")
    g.add_argument("--actors", type=int, default=1,
                   help="Ray actors, each holding one engine (default 1; on GPUs: the number "
                        "of GPUs)")
    g.add_argument("--ray-batch-size", type=int, default=8,
                   help="images per Ray task (default 8)")
    g.add_argument("--gpus-per-actor", type=float, default=None,
                   help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-actor", type=float, default=1.0)
    g.add_argument("--max-restarts", type=int, default=3,
                   help="restarts of an actor that died; its batch is retried (default 3)")
    g.add_argument("--ray-cpus", type=int, default=None,
                   help="CPUs of a local Ray (default: all of this machine's)")


def cluster_options(args: argparse.Namespace) -> Any:
    """ClusterOptions from the flags (SystemExit with the reason when they are invalid)."""
    from annotator.jobs.cluster import ClusterOptions

    try:
        return ClusterOptions(address=args.ray, actors=args.actors,
                              batch_size=args.ray_batch_size, gpus_per_actor=args.gpus_per_actor,
                              cpus_per_actor=args.cpus_per_actor, max_restarts=args.max_restarts,
                              max_task_retries=args.max_restarts, num_cpus=args.ray_cpus)
    except ValueError as exc:
        raise SystemExit(f"invalid cluster options: {exc}") from None


def engine_factory(args: argparse.Namespace, category: str = "") -> Any:
    """A picklable callable building, on each actor, the engine the flags describe (the same
    factory and settings as the driver's ``engine_from_args(args, category)``)."""
    from annotator.cli.common import engine_builder

    return engine_builder(args, category)


class Bar:
    """tqdm on stderr: images done, rate and failures."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm import tqdm

        self.failed = 0
        self._bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr,
                         dynamic_ncols=True)

    def update(self, ok: bool, n: int = 1) -> None:
        if not ok:
            self.failed += n
            self._bar.set_postfix(failed=self.failed, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def cluster_ray_predictions(args: argparse.Namespace, request: Any, bar: Any,
                            category: str = "") -> Any:
    """Predictions of ``request`` computed on Ray, in target order (the driver's bar advances
    as batches come back). Raises SystemExit when Ray is missing or unreachable."""
    from annotator.jobs.cluster import ClusterError, run_propagate

    order = {path: i for i, path in enumerate(request.targets)}
    done: dict[str, list[Any]] = {}
    failed = 0
    try:
        for pred in run_propagate(request, engine_factory(args, category),
                                  cluster_options(args)):
            first = pred.path not in done
            done.setdefault(pred.path, []).append(pred)
            if first:
                failed += pred.error is not None
                bar.n = len(done)
                if failed:
                    bar.set_postfix(failed=failed, refresh=False)
                bar.refresh()
    except ClusterError as exc:
        raise SystemExit(f"error: {exc}") from None
    return [p for path in sorted(done, key=order.__getitem__) for p in done[path]]
