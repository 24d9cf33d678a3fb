"""Learned keypoint head on frozen DINOv2-S features: box PCK@0.1 vs the number of training
frames k, and the training time (BENCHMARKS.md "Learning from corrections").

Data: the DeepLabCut example projects in ``../shared/fixtures/dlc-examples`` (openfield m4s1,
Reaching reachingvideo1). Every frame is cropped around its *labelled keypoints' box* enlarged by
15 % per side (at least a tenth of the image's longest side: ``jobs.propagate.reference_crop``'s
rule), for training and test frames alike (no detector). 30 test frames spread over the set;
the k training frames are spread over a pool of 20 other frames (also spread). PCK@0.1: a
point is correct when its error is <= 0.1 x max(w, h) of the test frame's keypoint box; a point
not predicted counts as a miss.

    PYTHONPATH=$PWD python benchmarks/head_bench.py --cache /work/featcache

Features go through a FeatureCache in ``--cache`` (computed once, ~3 s per crop on 2 cores).
``--features-only`` fills the cache and stops.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
DATASETS = {
    "openfield": ("openfield-Pranav-2018-10-30", "m4s1", "CollectedData_Pranav.csv"),
    "reaching": ("Reaching-Mackenzie-2018-08-30", "reachingvideo1", "CollectedData_Mackenzie.csv"),
}
KS = (1, 3, 5, 10, 20)


@dataclass(frozen=True)
class Frame:
    path: Path
    points: np.ndarray  # (K, 2) image pixels, NaN where not labelled


def load_dlc(name: str, fixtures: Path = FIXTURES) -> tuple[tuple[str, ...], list[Frame]]:
    """(keypoint names, labelled frames) of a DeepLabCut example project's CSV."""
    import pandas as pd

    project, video, csv = DATASETS[name]
    base = fixtures / "dlc-examples" / project
    df = pd.read_csv(base / "labeled-data" / video / csv, header=[0, 1, 2], index_col=0)
    names = tuple(dict.fromkeys(df.columns.get_level_values(1)))
    frames = []
    for rel, row in df.iterrows():
        pts = np.array([[row.xs(bp, level=1).xs(c, level=1).iloc[0] for c in ("x", "y")]
                        for bp in names], dtype=np.float64)
        frames.append(Frame(base / str(rel), pts))
    return names, frames


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over range(n)."""
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)}) if k > 1 else [n // 2]


def split(n: int, tests: int = 30, pool: int = 20) -> tuple[list[int], list[int]]:
    """(test indices, training pool indices) spread over ``n`` frames, disjoint."""
    test = spread(n, tests)
    rest = [i for i in range(n) if i not in set(test)]
    return test, [rest[i] for i in spread(len(rest), pool)]


def crop_of(image: np.ndarray, points: np.ndarray):  # noqa: ANN201
    """(ImageCrop, points in crop pixels, valid) around the labelled keypoints (+15 %)."""
    from annotator.jobs.propagate import ReferenceSpec, reference_crop

    valid = np.all(np.isfinite(points), axis=1)
    spec = ReferenceSpec("", tuple(map(tuple, np.nan_to_num(points))), tuple(valid))
    return reference_crop(image, spec, 0.15)


def make_engine(cache_dir: str):  # noqa: ANN201
    from annotator.engine import Engine
    from annotator.features.cache import FeatureCache

    cache = FeatureCache(cache_dir, disk_bytes=50 << 30)
    return Engine.from_pretrained(dino_model=str(FIXTURES / "dinov2-small"), preset="fast",
                                  fusion="dino", device="cpu", local_files_only=True,
                                  feature_cache=cache)


def encode(engine, frames: list[Frame], indices: list[int]):  # noqa: ANN001, ANN201
    """Per index: (descriptor (C, G, G), crop rect, letterbox, points (K, 2), valid (K,))."""
    from annotator.io.images import load_image

    out = {}
    for n, i in enumerate(indices):
        image = load_image(frames[i].path)
        crop, pts, valid = crop_of(image, frames[i].points)
        t0 = time.perf_counter()
        maps = engine.features(crop)
        logging.info("%s (%d/%d) %.1f s", frames[i].path.name, n + 1, len(indices),
                     time.perf_counter() - t0)
        out[i] = (engine.extractor.describe(maps), crop.rect, maps.letterbox, pts, valid)
    return out


def box_scale(points: np.ndarray) -> float:
    p = points[np.all(np.isfinite(points), axis=1)]
    return float(np.max(p.max(0) - p.min(0)))


def evaluate(name: str, engine, kinds: tuple[str, ...], params_over: dict) -> dict:  # noqa: ANN001
    import torch

    from annotator.matching import head as hm

    names, frames = load_dlc(name)
    test, pool = split(len(frames))
    enc = encode(engine, frames, test + pool)
    perm = torch.as_tensor(hm.flip_permutation_of_names(names))
    rows: dict = {}
    for kind in kinds:
        params = hm.HeadParams(kind=kind, **params_over)
        for k in KS:
            train = [pool[i] for i in spread(len(pool), k)]
            desc = torch.stack([enc[i][0] for i in train])
            cells = np.stack([hm.pixels_to_cells(enc[i][3], enc[i][2], desc.shape[-1])
                              for i in train])
            valid = np.stack([enc[i][4] for i in train])
            t0 = time.perf_counter()
            head = hm.train_head(desc, torch.as_tensor(cells), torch.as_tensor(valid), perm,
                                 params)
            train_s = time.perf_counter() - t0
            hits = total = 0
            errors = []
            for i in test:
                d, rect, lb, _, _ = enc[i]
                cells_p, _ = hm.predict(head, d)
                pred = rect.to_image(hm.cells_to_pixels(cells_p.numpy(), lb, d.shape[-1]))
                gt = frames[i].points
                ok = np.all(np.isfinite(gt), axis=1)
                err = np.linalg.norm(pred[ok] - gt[ok], axis=1)
                err = np.where(np.isfinite(err), err, np.inf)
                hits += int((err <= 0.1 * box_scale(gt)).sum())
                total += int(ok.sum())
                errors += err.tolist()
            rows[f"{kind} k={k}"] = {"pck": 100.0 * hits / total, "train_s": train_s,
                                     "median_px": float(np.median(errors)), "points": total}
            logging.info("%s %s k=%d: PCK %.1f %% (median %.1f px), train %.2f s", name, kind, k,
                         rows[f"{kind} k={k}"]["pck"], rows[f"{kind} k={k}"]["median_px"],
                         train_s)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="/work/featcache")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--kinds", nargs="+", default=["linear", "prototype", "mlp"])
    ap.add_argument("--features-only", action="store_true")
    ap.add_argument("--params", default="{}", help="JSON of HeadParams overrides")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(2)
    engine = make_engine(args.cache)
    results = {}
    for name in args.datasets:
        if args.features_only:
            _, frames = load_dlc(name)
            test, pool = split(len(frames))
            encode(engine, frames, test + pool)
            continue
        results[name] = evaluate(name, engine, tuple(args.kinds), json.loads(args.params))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    for name, rows in results.items():
        for key, r in rows.items():
            print(f"{name:10s} {key:16s} PCK@0.1 {r['pck']:5.1f} %  median {r['median_px']:6.1f}"
                  f" px  train {r['train_s']:.2f} s")


if __name__ == "__main__":
    main()
