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
DATASETS = {  # DLC project folder, labelled-frames folder
    "openfield": ("openfield-Pranav-2018-10-30", "m4s1"),
    "reaching": ("Reaching-Mackenzie-2018-08-30", "reachingvideo1"),
}
KS = (1, 3, 5, 10, 20)


@dataclass(frozen=True)
class Frame:
    path: Path
    points: np.ndarray  # (K, 2) image pixels, NaN where not labelled


def load_dlc(name: str, fixtures: Path = FIXTURES) -> tuple[tuple[str, ...], list[Frame]]:
    """(keypoint names, labelled frames) of a DeepLabCut example project (``io.formats.dlc``)."""
    from annotator.io.formats.dlc import read_dlc

    project = read_dlc(fixtures / "dlc-examples" / DATASETS[name][0] / "config.yaml")
    frames = []
    for rec in project.images:
        kps = project.annotation(rec.path).instances[0].keypoints
        pts = np.array([[kp.x, kp.y] if kp.labelled else [np.nan, np.nan] for kp in kps])
        frames.append(Frame(Path(project.image_root) / rec.path, pts))
    return tuple(project.schema.keypoints), frames


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
                                  softargmax_window=0,  # DESIGN.md 12: off for DINO-only
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


def _score(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labelled mask (K,), error px (K,), inf where not predicted)."""
    ok = np.all(np.isfinite(gt), axis=1)
    err = np.linalg.norm(pred - gt, axis=1)
    return ok, np.where(np.isfinite(err), err, np.inf)


VARIANTS = {  # name -> HeadParams overrides
    "mlp": {},  # the defaults: 2-layer head, 64 principal directions, hidden 32
    "linear": {"kind": "linear", "dim": 0},  # DESIGN.md section 12's head (all C channels)
    "linear-pca128": {"kind": "linear", "dim": 128},
    "mlp-gridflip": {"flip": True},
    "prototype": {"kind": "prototype"},
}


def evaluate(name: str, engine, variants: tuple[str, ...], zero_shot: bool) -> dict:  # noqa: ANN001
    """Per (variant, k): PCK@0.1, median error, train wall / CPU seconds; per k the zero-shot
    transfer (k crop references, most confident wins) and the per-point records for the
    head/transfer combination."""
    import torch

    from annotator.matching import head as hm

    names, frames = load_dlc(name)
    test, pool = split(len(frames))
    enc = encode(engine, frames, test + pool)
    perm = hm.flip_permutation_of_names(names)
    rows: dict = {}
    points: dict = {}
    for variant in variants:
        params = hm.HeadParams(**VARIANTS[variant])
        for k in KS:
            train = [pool[i] for i in spread(len(pool), k)]
            desc = torch.stack([enc[i][0] for i in train]).float()
            cells = np.stack([hm.pixels_to_cells(np.nan_to_num(enc[i][3]), enc[i][2],
                                                 desc.shape[-1]) for i in train])
            valid = np.stack([enc[i][4] for i in train])
            times = []
            for _ in range(3):  # the machine is shared: keep the fastest of three
                t0, c0 = time.perf_counter(), time.thread_time()
                head = hm.train_head(desc, torch.as_tensor(cells), torch.as_tensor(valid),
                                     perm, params)
                times.append((time.perf_counter() - t0, time.thread_time() - c0))
            wall, cpu = min(times)
            hits = total = 0
            errors, recs = [], []
            for i in test:
                d, rect, lb, _, _ = enc[i]
                cells_p, conf = hm.predict(head, d.float())
                pred = rect.to_image(hm.cells_to_pixels(cells_p.numpy(), lb, d.shape[-1]))
                ok, err = _score(pred, frames[i].points)
                good = err <= 0.1 * box_scale(frames[i].points)
                hits += int(good[ok].sum())
                total += int(ok.sum())
                errors += err[ok].tolist()
                recs.append((i, pred, conf.numpy()))
            key = f"{variant} k={k}"
            rows[key] = {"pck": 100.0 * hits / total, "train_s": wall, "train_cpu_s": cpu,
                         "median_px": float(np.median(errors)), "points": total}
            if variant == variants[0]:
                points[k] = {"head": recs}
            logging.info("%s %s: PCK %.1f %% (median %.1f px), train %.2f s (cpu %.2f s)",
                         name, key, rows[key]["pck"], rows[key]["median_px"], wall, cpu)
    if zero_shot:
        for k in KS:
            train = [pool[i] for i in spread(len(pool), k)]
            refs = [(_crop(frames[i]), enc[i][3], enc[i][4]) for i in train]
            hits = total = 0
            recs = []
            for i, res in zip(test, engine.iter_transfer(refs, [_crop(frames[i]) for i in test],
                                                          flip=False)):
                pred = enc[i][1].to_image(np.asarray(res.points, float))
                ok, err = _score(pred, frames[i].points)
                good = err <= 0.1 * box_scale(frames[i].points)
                hits += int(good[ok].sum())
                total += int(ok.sum())
                recs.append((i, pred, np.where(res.found, res.confidence, np.nan)))
            rows[f"zero-shot k={k}"] = {"pck": 100.0 * hits / total, "points": total}
            points[k]["transfer"] = recs
            logging.info("%s zero-shot k=%d: PCK %.1f %%", name, k, rows[f"zero-shot k={k}"]["pck"])
    return {"rows": rows, "points": points, "frames": frames}


def _crop(frame: Frame):  # noqa: ANN202
    from annotator.io.images import load_image

    return crop_of(load_image(frame.path), frame.points)[0]


def combination(results: dict) -> dict:
    """Head + zero-shot per keypoint by confidence: raw confidences, and calibrations fitted on
    the *other* dataset (per k). PCK@0.1 per dataset and k."""
    from annotator.matching.combine import (
        HEAD_CALIBRATION,
        TRANSFER_CALIBRATION,
        Calibration,
        combine_head_and_transfer,
        fit_calibration,
    )

    def records(name: str, k: int) -> tuple[list, np.ndarray, np.ndarray]:
        r = results[name]
        out, hc, hok, tc, tok = [], [], [], [], []
        for (i, hp, hconf), (_, tp, tconf) in zip(r["points"][k]["head"],
                                                 r["points"][k]["transfer"]):
            gt = r["frames"][i].points
            thr = 0.1 * box_scale(gt)
            ok, he = _score(hp, gt)
            _, te = _score(tp, gt)
            out.append((hp, hconf, tp, tconf, gt, thr, ok))
            hc += list(hconf[ok])
            hok += list(he[ok] <= thr)
            tc += list(np.nan_to_num(tconf[ok], nan=0.0))
            tok += list(te[ok] <= thr)
        return out, (np.array(hc), np.array(hok)), (np.array(tc), np.array(tok))

    table: dict = {}
    names = list(results)
    # one calibration per source from every dataset and k >= 3 (what the application ships)
    pooled = [records(n, k)[1:] for n in names for k in KS if k >= 3]
    pooled_cal = tuple(fit_calibration(np.concatenate([p[j][0] for p in pooled]),
                                       np.concatenate([p[j][1] for p in pooled]), 10)
                       for j in (0, 1))
    table["calibrations"] = {"head": [pooled_cal[0].xs, pooled_cal[0].ys],
                             "transfer": [pooled_cal[1].xs, pooled_cal[1].ys]}
    for name in names:
        other = [n for n in names if n != name]
        for k in KS:
            recs, _, _ = records(name, k)
            cals = {"raw": (Calibration(), Calibration()), "pooled": pooled_cal,
                    "shipped": (HEAD_CALIBRATION, TRANSFER_CALIBRATION)}
            if other:
                _, (hc, hok), (tc, tok) = records(other[0], k)
                cals["other-dataset"] = (fit_calibration(hc, hok, 6),
                                         fit_calibration(tc, tok, 6))
            for label, (hcal, tcal) in cals.items():
                hits = total = from_head = 0
                for hp, hconf, tp, tconf, gt, thr, ok in recs:
                    comb = combine_head_and_transfer(
                        tp, np.nan_to_num(tconf), np.isfinite(tconf), hp, hconf,
                        head_calibration=hcal, transfer_calibration=tcal,
                        num_images=k if label == "shipped" else None)
                    _, err = _score(comb.points, gt)
                    hits += int((err[ok] <= thr).sum())
                    total += int(ok.sum())
                    from_head += int((comb.source[ok] == 2).sum())
                table[f"{name} {label} k={k}"] = {"pck": 100.0 * hits / total,
                                                  "head_share": 100.0 * from_head / total}
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="/work/featcache")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--no-zero-shot", action="store_true")
    ap.add_argument("--features-only", action="store_true")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    engine = make_engine(args.cache)
    results = {}
    for name in args.datasets:
        if args.features_only:
            _, frames = load_dlc(name)
            test, pool = split(len(frames))
            encode(engine, frames, test + pool)
            continue
        results[name] = evaluate(name, engine, tuple(args.variants), not args.no_zero_shot)
    combined = combination(results) if not args.no_zero_shot else {}
    rows = {name: r["rows"] for name, r in results.items()}
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "combined": combined}, indent=1))
    for name, table in rows.items():
        for key, r in table.items():
            extra = (f"  median {r['median_px']:6.1f} px  train {r['train_s']:.2f} s "
                     f"(cpu {r['train_cpu_s']:.2f} s)" if "train_s" in r else "")
            print(f"{name:10s} {key:20s} PCK@0.1 {r['pck']:5.1f} %{extra}")
    for key, r in combined.items():
        if key == "calibrations":
            for src, (xs, ys) in r.items():
                print(f"calibration {src}: xs {np.round(xs, 3).tolist()} ys "
                      f"{np.round(ys, 3).tolist()}")
            continue
        print(f"combined {key:30s} PCK@0.1 {r['pck']:5.1f} %  from head {r['head_share']:.0f} %")


if __name__ == "__main__":
    main()
