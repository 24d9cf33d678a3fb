"""Transfer of 30 keypoints to cached paper-preset targets, per fusion and path.

Reproduces the setup of ``annotator bench``'s transfer part (synthetic paper-shaped maps behind
the targets' cache keys, a FeatureCache in a temporary folder, ``Engine.iter_transfer``) with
more targets, and reports the one-off (reference read and preparation, first call) apart from the
steady state per target (``annotator.bench.runner._time_transfer``):

    python benchmarks/transfer_bench.py --targets 200
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from annotator.bench.runner import _CachedOnly, _key_image, _time_transfer, synthetic_maps
from annotator.engine import Engine
from annotator.features.cache import FeatureCache
from annotator.features.config import preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--targets", type=int, default=200)
    ap.add_argument("--prefetch", type=int, default=8)
    ap.add_argument("--copca-targets", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3,
                    help="repetitions per case (the best steady state is kept)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    pts = np.random.default_rng(5).random((30, 2)) * [639, 479]
    results = {}
    cfg0 = preset("paper")
    fp, ref = _CachedOnly(cfg0).fingerprint, _key_image(-1)
    base = [synthetic_maps(cfg0, (480, 640), s) for s in range(9)]
    with tempfile.TemporaryDirectory() as tmp:
        disk = FeatureCache(tmp, memory_bytes=0, disk_bytes=1 << 50)
        mem = FeatureCache(None, memory_bytes=1 << 40, use_disk=False)
        disk.put(disk.key(ref, fp), base[-1])
        mem.put(mem.key(ref, fp), base[-1])
        for i in range(args.targets):
            disk.put(disk.key(_key_image(i), fp), base[i % 8])
        for i in range(8):
            mem.put(mem.key(_key_image(i), fp), base[i])
        cases = [("concat-prefetch", "concat", True, args.prefetch, args.targets),
                 ("concat-lockstep", "concat", True, 0, min(args.targets, 50)),
                 ("concat-materialised", "concat", False, 0, 20),
                 ("copca", "copca", False, 0, args.copca_targets)]
        for name, fusion, fast, prefetch, n in cases:
            cfg = cfg0.replace(fusion=fusion)
            for where in ("disk", "memory"):
                cache = (FeatureCache(tmp, memory_bytes=0, disk_bytes=1 << 50)
                         if where == "disk" else mem)
                targets = [_key_image(i if where == "disk" else i % 8) for i in range(n)]

                def make(cfg=cfg, cache=cache, fast=fast):  # noqa: ANN001, ANN202
                    eng = Engine(config=cfg, cache=cache, extractor=_CachedOnly(cfg))
                    if not fast:  # the materialised path: iter_transfer(fast=False)
                        it = eng.iter_transfer

                        def slow(*a, **k):  # noqa: ANN002, ANN003, ANN202
                            return it(*a, **{**k, "fast": False})

                        eng.iter_transfer = slow  # type: ignore[method-assign]
                    return eng

                r = _time_transfer(make, ref, pts, targets, prefetch, 1000,
                                   args.repeats if fusion != "copca" and fast else 1)
                r["loadavg"] = os.getloadavg()[0]
                results[f"{name}-{where}"] = r
                print(f"{name:20s} {where:6s} steady {r['seconds_per_target'] * 1e3:7.1f} "
                      f"ms/target, one-off {r['one_off_seconds']:.2f} s -> "
                      f"{r['projected_seconds']:7.1f} s per 1,000 (load {r['loadavg']:.1f})",
                      flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cases": results, "keypoints": 30}, f, indent=1)


if __name__ == "__main__":
    main()
