"""Feature extraction throughput: single process vs Ray Data with 1 and 2 actors.

Same work in every mode: ``annotator.jobs.batch.extract_batch`` over N images into a fresh
feature cache, with the tiny random-weight models of the tests (real SD 1.5 / DINOv2 layouts,
``tests.tiny_models.TINY`` config) on the CPU. Reported per mode: total wall time (for Ray:
from the pipeline start, actor start-up and model loading included, Ray start not included),
and the steady rate after the first outcome arrived (start-up excluded)::

    python benchmarks/cluster_bench.py --images 48 --out benchmarks/results/cluster.json

GPU recipe (one actor per GPU) in BENCHMARKS.md; ``--actors 1,2`` takes other counts and
``--models FOLDER`` full-size weights (sd/ and dino/ subfolders).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, side: int) -> list[str]:
    from PIL import Image
    from skimage import data

    base = np.asarray(Image.fromarray(data.astronaut()).resize((side, side)))
    names = []
    for i in range(n):
        name = f"im{i:04d}.png"
        Image.fromarray(np.roll(base, (7 * i, 11 * i), axis=(0, 1))).save(folder / name)
        names.append(name)
    return names


def build_engine(sd: str, dino: str, cache_dir: str, device: str):
    """Module-level (picklable) engine factory: tiny models, TINY config, a disk cache."""
    from annotator.engine import Engine
    from annotator.features.cache import FeatureCache
    from tests.tiny_models import TINY

    return Engine.from_pretrained(sd_model=sd, dino_model=dino, preset=TINY, device=device,
                                  feature_cache=FeatureCache(cache_dir))


def timed(outcomes, start: float) -> dict:
    stamps = []
    statuses = []
    for o in outcomes:
        stamps.append(time.perf_counter() - start)
        statuses.append(o.status)
    n = len(stamps)
    first = sum(t - stamps[0] < 0.05 for t in stamps)  # the first batch arrives at once
    span = stamps[-1] - stamps[0]
    steady = (n - first) / span if n > first and span > 0 else None
    return {"images": n, "total_s": round(stamps[-1], 2), "first_s": round(stamps[0], 2),
            "steady_img_per_s": round(steady, 2) if steady else None,
            "overall_img_per_s": round(n / stamps[-1], 2),
            "computed": statuses.count("computed")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--batch-size", type=int, default=4, help="images per Ray task")
    ap.add_argument("--models", default=None, help="folder with sd/ and dino/ (default: tiny)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    from annotator.jobs.batch import batches, extract_batch
    from annotator.jobs.cluster import ClusterOptions, connect, run_extract

    tmp = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    if args.models:
        sd, dino = str(Path(args.models) / "sd"), str(Path(args.models) / "dino")
    else:
        from tests.tiny_models import build_tiny_models

        sd, dino = map(str, build_tiny_models(tmp / "models"))
    (tmp / "imgs").mkdir()
    paths = make_images(tmp / "imgs", args.images, args.side)
    root = str(tmp / "imgs")
    results: dict = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or
                     platform.machine(), "cpus": os.cpu_count(), "torch_threads":
                     torch.get_num_threads(), "load_avg_start": os.getloadavg(),
                     "images": args.images, "side": args.side, "batch_size": args.batch_size,
                     "models": args.models or "tiny random (tests/tiny_models.py, TINY)"}

    # single process: the same batch function, one engine; torch on 1 thread (as one Ray
    # actor with num_cpus=1 gets) and on all threads
    threads = torch.get_num_threads()
    for label, nthreads in (("single_process_1_thread", 1), ("single_process", threads)):
        torch.set_num_threads(nthreads)
        t0 = time.perf_counter()
        engine = build_engine(sd, dino, str(tmp / f"cache-{label}"), args.device)
        engine.extractor  # noqa: B018
        load_s = time.perf_counter() - t0
        start = time.perf_counter()
        outs = (o for chunk in batches(paths, args.batch_size)
                for o in extract_batch(chunk, root, engine))
        results[label] = {**timed(outs, start), "model_load_s": round(load_s, 2),
                          "torch_threads": nthreads}
        print(label, results[label], flush=True)

    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    with connect(ClusterOptions(address="local")) as ray:
        results["ray_start_s"] = round(time.perf_counter() - t0, 2)
        results["ray_cpus"] = ray.cluster_resources().get("CPU")
        for n in (int(a) for a in args.actors.split(",")):
            factory = functools.partial(build_engine, sd, dino, str(tmp / f"cache-ray{n}"),
                                        args.device)
            opts = ClusterOptions(actors=n, batch_size=args.batch_size)
            start = time.perf_counter()
            results[f"ray_{n}_actors"] = timed(run_extract(paths, root, factory, opts), start)
            print(f"ray {n} actor(s)", results[f"ray_{n}_actors"], flush=True)
    results["load_avg_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
