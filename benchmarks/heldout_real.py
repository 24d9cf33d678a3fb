"""Real images of held-out categories (people, animals, hands, faces, insects, clothing):
propagation with ONE reference and the targets' label boxes vs the two copy baselines.

The labelled test images of mmpose (``tests/data/<set>/``, a few images per dataset with
keypoint annotations) are extracted from a local git mirror into ``--work`` (never into the
repository), each readable set becomes one annotator project (COCO files through
:func:`annotator.io.coco.coco_to_project`; MPII's own list format too), and every ordered image
pair of a set is scored: each labelled image in turn is the one reference, every other one a
target, through :func:`annotator.jobs.eval_labelled.evaluate_labelled` with ``boxes="labels"``
(the product's propagation code runs). Per set the errors of all its pairs are pooled; the
summary is the mean over sets. Variants (prior weight, combine rule) share one engine and the
disk feature cache, so only the first variant extracts features::

    PYTHONPATH=$PWD python benchmarks/heldout_real.py \\
        --mirror /work/.mirror/open-mmlab+mmpose/repo \\
        --dino-model ../shared/fixtures/dinov2-small --cache-dir /work/featcache

Instances kept: >= 3 labelled keypoints; box = the file's bbox, else the labelled keypoints'
box. Sets with fewer than 2 usable images are skipped. Results go to
``--work/results-<preset>.json`` after every reference (a rerun resumes) and a markdown
table to stdout (and ``--markdown``).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from annotator.domain.project import Project, ProjectSettings
from annotator.io.coco import coco_to_project
from annotator.jobs.eval_labelled import (
    METHODS,
    LabelledEvalConfig,
    evaluate_labelled,
    labelled_instances,
)

log = logging.getLogger("heldout_real")

IMAGE_EXT = (".jpg", ".jpeg", ".png")
ALPHAS = (0.05, 0.1, 0.2)
MIN_POINTS = 3
#: what each mmpose test set shows (for the table)
KIND = {
    "coco": "people", "aic": "people", "crowdpose": "people", "exlpose": "people (dark)",
    "h36m": "people", "humanart": "people (art)", "jhmdb": "people", "mhp": "people",
    "mpii": "people", "ochuman": "people", "posetrack18": "people", "halpe": "people",
    "ap10k": "animals", "ak": "animals", "animalpose": "animals", "atrw": "animals (tiger)",
    "horse10": "animals (horse)", "macaque": "animals (macaque)", "zebra": "animals (zebra)",
    "fly": "insects (fly)", "locust": "insects (locust)",
    "freihand": "hands", "onehand10k": "hands", "panoptic": "hands", "rhd": "hands (render)",
    "300vw": "faces", "300w": "faces", "300wlp": "faces", "aflw": "faces", "cofw": "faces",
    "lapa": "faces", "wflw": "faces", "deepfasion2": "clothing", "fld": "clothing",
}
MPII_NAMES = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
              "pelvis", "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow",
              "right_shoulder", "left_shoulder", "left_elbow", "left_wrist")
#: name -> ProjectSettings changes; "default" is the engine as shipped
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "prior 0": {"prior_weight": 0.0},
    "prior 0.02": {"prior_weight": 0.02},
    "prior 0.05": {"prior_weight": 0.05},
    "prior 0.1": {"prior_weight": 0.1},
    "prior 0.2": {"prior_weight": 0.2},
    "prior 0.3": {"prior_weight": 0.3},
    "prior 0.5": {"prior_weight": 0.5},
    "combine best": {"combine": "best"},
}


# ------------------------------------------------------------------ extraction
def _git(mirror: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(mirror), *args], check=True,
                          capture_output=True).stdout


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _box(pts: np.ndarray) -> list[float]:
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    w, h = max(hi[0] - lo[0], 1.0), max(hi[1] - lo[1], 1.0)
    return [float(lo[0]), float(lo[1]), float(w), float(h)]


def _instance(flat: list[float], bbox: Any) -> dict[str, Any] | None:
    """A clean COCO annotation (keypoints, bbox) or None with < MIN_POINTS labelled."""
    kp = np.asarray(flat, float).reshape(-1, 3)
    labelled = (kp[:, 2] > 0) & np.isfinite(kp[:, :2]).all(axis=1)
    if labelled.sum() < MIN_POINTS:
        return None
    kp[~labelled] = 0.0
    kp[labelled, 2] = np.clip(np.round(kp[labelled, 2]), 1, 2)
    if not (isinstance(bbox, list) and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0):
        bbox = _box(kp[labelled, :2])
    return {"keypoints": [float(v) for v in kp.ravel()], "bbox": [float(b) for b in bbox]}


def _coco_sets(doc: Any) -> tuple[list[str], dict[str, list[dict]]] | None:
    """(keypoint names, file_name -> clean annotations) of a COCO keypoints document, every
    category with the most common keypoint count merged (ap10k, Animal Kingdom)."""
    if not (isinstance(doc, dict) and isinstance(doc.get("images"), list)
            and isinstance(doc.get("annotations"), list)):
        return None
    anns = []
    for a in doc["annotations"]:
        kp = a.get("keypoints")
        if isinstance(kp, list) and kp and isinstance(kp[0], list):  # RHD: [[x, y, v], ...]
            kp = [float(v) for triple in kp for v in triple]
        if isinstance(kp, list) and kp and len(kp) % 3 == 0:
            anns.append({**a, "keypoints": kp})
    if not anns:
        return None
    counts: dict[int, int] = {}
    for a in anns:
        counts[len(a["keypoints"]) // 3] = counts.get(len(a["keypoints"]) // 3, 0) + 1
    k = max(counts, key=counts.get)  # type: ignore[arg-type]
    names = next((list(c["keypoints"]) for c in doc.get("categories", [])
                  if len(c.get("keypoints") or []) == k), [f"p{i + 1}" for i in range(k)])
    files = {im["id"]: im["file_name"] for im in doc["images"]}
    out: dict[str, list[dict]] = {}
    for a in anns:
        if len(a["keypoints"]) != 3 * k or a.get("image_id") not in files:
            continue
        inst = _instance(a["keypoints"], a.get("bbox"))
        if inst is not None:
            out.setdefault(files[a["image_id"]], []).append(inst)
    return names, out


def _mpii_sets(doc: Any) -> tuple[list[str], dict[str, list[dict]]] | None:
    """MPII's own list of {image, joints, joints_vis}."""
    if not (isinstance(doc, list) and doc and isinstance(doc[0], dict)
            and {"image", "joints", "joints_vis"} <= set(doc[0])):
        return None
    out: dict[str, list[dict]] = {}
    for e in doc:
        j = np.asarray(e["joints"], float).reshape(-1, 2)
        if len(j) != len(MPII_NAMES):
            continue
        vis = np.asarray(e["joints_vis"], float) * (j >= 0).all(axis=1)
        flat = np.concatenate([j, 2 * (vis[:, None] > 0)], axis=1).ravel().tolist()
        inst = _instance(flat, None)
        if inst is not None:
            out.setdefault(e["image"], []).append(inst)
    return list(MPII_NAMES), out


def _resolve(name: str, images: list[str]) -> str | None:
    """The set's image file that ``name`` means: the same relative path, else the longest
    matching path suffix (HumanArt's file names carry a prefix the test data lacks)."""
    if name in images:
        return name
    parts = PurePosixPath(name).parts
    best, best_n = None, 0
    for img in images:
        ip = PurePosixPath(img).parts
        n = 0
        while n < min(len(parts), len(ip)) and parts[-1 - n] == ip[-1 - n]:
            n += 1
        if n > best_n:
            best, best_n = img, n
    return best


def extract(mirror: Path, work: Path, only: set[str] | None = None
            ) -> dict[str, tuple[Project, str]]:
    """One project per readable set of ``tests/data`` (the file with the most usable images
    per set folder), images extracted under ``work/<set>/``; value: (project, source file)."""
    listing = _git(mirror, "ls-tree", "-r", "--name-only", "HEAD", "tests/data").decode()
    by_set: dict[str, list[str]] = {}
    for path in listing.split("\n"):
        parts = path.split("/")
        if len(parts) >= 4:
            by_set.setdefault(parts[2], []).append("/".join(parts[3:]))
    projects: dict[str, tuple[Project, str]] = {}
    for name, files in sorted(by_set.items()):
        if only and name not in only:
            continue
        images = [f for f in files if f.lower().endswith(IMAGE_EXT)]
        best = None
        for f in sorted((f for f in files if f.endswith(".json")), key=len):
            try:
                doc = json.loads(_git(mirror, "show", f"HEAD:tests/data/{name}/{f}"))
            except (subprocess.CalledProcessError, ValueError):
                continue
            parsed = _coco_sets(doc) or _mpii_sets(doc)
            if parsed is None:
                continue
            kp_names, anns = parsed
            usable = {img: a for fn, a in anns.items()
                      if (img := _resolve(fn, images)) is not None}
            if best is None or len(usable) > len(best[2]):
                best = (f, kp_names, usable)
        if best is None or len(best[2]) < 2:
            log.info("%s: no set with >= 2 usable images; skipped", name)
            continue
        source, kp_names, usable = best
        root = work / name
        doc_images, doc_anns = [], []
        for i, (img, insts) in enumerate(sorted(usable.items())):
            dest = root / img
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(_git(mirror, "show", f"HEAD:tests/data/{name}/{img}"))
            w, h = _size(dest)
            doc_images.append({"id": i + 1, "file_name": img, "width": w, "height": h})
            for inst in insts:
                doc_anns.append({"id": len(doc_anns) + 1, "image_id": i + 1,
                                 "category_id": 1, **inst})
        doc = {"images": doc_images, "annotations": doc_anns,
               "categories": [{"id": 1, "name": name, "keypoints": kp_names}]}
        (root / "labels.json").write_text(json.dumps(doc))
        projects[name] = (coco_to_project(doc, root.resolve(), f"{name}/{source}"),
                          f"tests/data/{name}/{source}")
    return projects


# ------------------------------------------------------------------ evaluation
def _pck(errors: list[float], sides: list[float], alpha: float) -> float:
    if not errors:
        return float("nan")
    return float(100 * np.mean(np.asarray(errors) <= alpha * np.asarray(sides)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from annotator.jobs.engine_factory import build_engine

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.sets.split(",")) if args.sets else None
    projects = extract(Path(args.mirror), work, only)
    base = ProjectSettings(dino_model=str(Path(args.dino_model).resolve()), fusion="dino",
                           device=args.device, cache_dir=args.cache_dir, preset=args.preset)
    engine = build_engine(base)
    out_path = work / f"results-{args.preset}.json"
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    variants = [v for v in VARIANTS if not args.variants or v in args.variants.split(",")]
    for name, (project, source) in projects.items():
        labelled = [r.path for r in project.images if labelled_instances(project, r.path)]
        entry = results.setdefault(name, {"source": source, "images": len(labelled),
                                          "instances": 0, "pairs": {}})
        entry["instances"] = sum(len(labelled_instances(project, p)) for p in labelled)
        entry["keypoints"] = len(project.schema)
        for ref in labelled:
            pair = entry["pairs"].setdefault(ref, {})
            for variant in variants:
                if variant in pair:
                    continue
                settings = replace(base, **VARIANTS[variant])
                t0 = time.perf_counter()
                res = evaluate_labelled(project, engine,
                                        LabelledEvalConfig(references=(ref,), boxes="labels",
                                                           alphas=ALPHAS), settings=settings)
                pair[variant] = {
                    "seconds": time.perf_counter() - t0, "targets": len(res.targets),
                    "failed": list(res.failed),
                    **{m: {"errors": [e if np.isfinite(e) else 1e12
                                      for e in res.scores[m].errors],
                           "box": res.scores[m].box_side} for m in METHODS}}
                log.info("%s ref %s %s: %.1f s, engine PCK@0.1 %.1f, box copy %.1f", name,
                         ref, variant, pair[variant]["seconds"],
                         res.scores["engine"].pck(0.1), res.scores["box copy"].pck(0.1))
                out_path.write_text(json.dumps(results))
    return {k: v for k, v in results.items() if k in projects}


def summarise(results: dict[str, Any]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """set -> variant -> method -> [PCK@alpha for ALPHAS], errors pooled over all pairs."""
    table: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name, entry in results.items():
        for variant in VARIANTS:
            pooled: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in METHODS}
            complete = len(entry["pairs"]) == entry["images"] and all(
                variant in p for p in entry["pairs"].values())
            if not complete:
                continue
            for pair in entry["pairs"].values():
                for m in METHODS:
                    pooled[m][0].extend(pair[variant][m]["errors"])
                    pooled[m][1].extend(pair[variant][m]["box"])
            table.setdefault(name, {})[variant] = {
                m: [_pck(*pooled[m], a) for a in ALPHAS] for m in METHODS}
    return table


def render(results: dict[str, Any], table: dict[str, Any], preset: str) -> str:
    fmt = " / ".join
    lines = [f"Preset {preset}; one reference, label boxes; PCK of the target's keypoint box "
             "@0.05 / 0.1 / 0.2, errors pooled over all ordered pairs of a set.", "",
             "| set | what | images (inst.) | K | pairs | points | engine (default) | box copy "
             "| copy |", "|---|---|---|---|---|---|---|---|---|"]
    for name, per in table.items():
        if "default" not in per:
            continue
        e = results[name]
        npairs = sum(p["default"]["targets"] for p in e["pairs"].values())
        points = sum(len(p["default"]["engine"]["errors"]) for p in e["pairs"].values())
        cells = [fmt(f"{v:.1f}" for v in per["default"][m]) for m in METHODS]
        lines.append(f"| {name} | {KIND.get(name, '?')} | {e['images']} ({e['instances']}) | "
                     f"{e['keypoints']} | {npairs} | {points} | " + " | ".join(cells) + " |")
    # the variants this run measured on every set (a partial run still gets its means)
    ran = [v for v in VARIANTS if table and all(v in per for per in table.values())]
    full = [n for n, per in table.items() if all(v in per for v in ran)]
    lines += ["", f"Mean over the {len(full)} sets (each set weighs the same):", "",
              "| method | @0.05 | @0.1 | @0.2 |", "|---|---|---|---|"]
    rows = [(f"engine, {v}", v, "engine") for v in ran]
    rows += [("box copy", "default", "box copy"), ("copy", "default", "copy")]
    for label, variant, method in rows:
        means = np.nanmean([[table[n][variant][method][i] for i in range(len(ALPHAS))]
                            for n in full], axis=0) if full else [np.nan] * len(ALPHAS)
        lines.append(f"| {label} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    lines += ["", "PCK@0.1 per set and variant (engine; box copy last):", "",
              "| set | " + " | ".join(ran) + " | box copy |",
              "|---" * (len(ran) + 2) + "|"]
    for n in full:
        lines.append(f"| {n} | " + " | ".join(f"{table[n][v]['engine'][1]:.1f}"
                                               for v in ran)
                     + f" | {table[n]['default']['box copy'][1]:.1f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirror", default="/work/.mirror/open-mmlab+mmpose/repo",
                    help="git directory of an mmpose clone or mirror")
    ap.add_argument("--work", default="/work/heldout",
                    help="where the images, projects and results go (outside the repository)")
    ap.add_argument("--dino-model", default="", help="DINOv2 weights (folder or hub id)")
    ap.add_argument("--cache-dir", default=None, help="feature cache folder")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sets", default="", help="comma-separated set names (default: all)")
    ap.add_argument("--variants", default="", help=f"comma-separated of {list(VARIANTS)}")
    ap.add_argument("--markdown", default=None, help="also write the tables here")
    ap.add_argument("--report-only", action="store_true",
                    help="only print the tables of the sets already complete in the results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("annotator", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.report_only:
        results = json.loads((Path(args.work) / f"results-{args.preset}.json").read_text())
    else:
        results = run(args)
    text = render(results, summarise(results), args.preset)
    sys.stdout.write(text + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
