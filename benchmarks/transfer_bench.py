"""Transfer of 30 keypoints to cached paper-preset targets, per fusion and path.

Reproduces the setup of ``annotator bench``'s transfer part (synthetic paper-shaped maps behind
the targets' cache keys, a FeatureCache in a temporary folder, ``Engine.iter_transfer``) and
times the steady state after the first target (the reference is prepared once):

    python benchmarks/transfer_bench.py --targets 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from annotator.engine import Engine
from annotator.features.cache import FeatureCache
from annotator.features.config import preset
from annotator.jobs.bench import _CachedOnly, _key_image, synthetic_maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--targets", type=int, default=200)
    ap.add_argument("--copca-targets", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    pts = np.random.default_rng(5).random((30, 2)) * [639, 479]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fusion, fast, n in (("concat", True, args.targets), ("concat", False, 20),
                                ("copca", False, args.copca_targets)):
            cfg = preset("paper").replace(fusion=fusion)
            stub = _CachedOnly(cfg)
            fp, ref = stub.fingerprint, _key_image(-1)
            base = [synthetic_maps(cfg, (480, 640), s) for s in range(9)]
            disk = FeatureCache(f"{tmp}/{fusion}", memory_bytes=0, disk_bytes=1 << 50)
            mem = FeatureCache(None, memory_bytes=1 << 40, use_disk=False)
            for c in (disk, mem):
                c.put(c.key(ref, fp), base[-1])
                for i in range(n):
                    c.put(c.key(_key_image(i), fp), base[i % 8])
            for where, cache in (("disk", FeatureCache(f"{tmp}/{fusion}", memory_bytes=0,
                                                       disk_bytes=1 << 50)), ("memory", mem)):
                eng = Engine(config=cfg, cache=cache, extractor=_CachedOnly(cfg))
                it = eng.iter_transfer([(ref, pts, None)], (_key_image(i) for i in range(n)),
                                       flip=False, fast=fast)
                next(it)
                t0 = time.perf_counter()
                for _ in it:
                    pass
                per = (time.perf_counter() - t0) / (n - 1)
                name = f"{fusion}{'-fast' if fast else ''}-{where}"
                results[name] = per
                print(f"{name:20s} {per * 1e3:8.1f} ms/target -> {per * 1000:7.1f} s per 1,000",
                      flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"seconds_per_target": results, "keypoints": 30}, f, indent=1)


if __name__ == "__main__":
    main()
