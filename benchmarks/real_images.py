"""Real-image accuracy, before and after each default, in one run (BENCHMARKS.md "Real images").

    python benchmarks/real_images.py --dino-model ../shared/fixtures/dinov2-small \
        --data ../shared/fixtures/dlc-examples --preset fast --out real-images.md

For each DeepLabCut example project: k references spread over the labelled frames, the other
frames predicted by propagation (annotator.jobs.eval_labelled), with the settings of each row;
PCK of the keypoint box and of the image, and seconds per target (features cached after the
first row that needs them: the first row of a kind pays the extraction).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

ROWS = (
    # label, settings changes, boxes mode
    ("before: whole image, most confident reference, soft-argmax on",
     {"combine": "best", "soft_argmax": True}, "none"),
    ("soft-argmax off", {"combine": "best", "soft_argmax": False}, "none"),
    ("+ prototypes (no prior)", {"prior_weight": 0.0}, "none"),
    ("+ boxes found from the references (no prior)", {"prior_weight": 0.0}, "auto"),
    ("+ spatial prior, weight by leave-one-out (the defaults)", {}, "auto"),
    ("defaults, found boxes, most confident reference", {"combine": "best"}, "auto"),
    ("for reference: label boxes given (defaults otherwise)", {}, "labels"),
)
PROJECTS = ("openfield-Pranav-2018-10-30", "Reaching-Mackenzie-2018-08-30")


def main() -> None:
    from annotator.domain.project import ProjectSettings
    from annotator.io.formats import import_dataset
    from annotator.jobs.engine_factory import build_engine
    from annotator.jobs.eval_labelled import LabelledEvalConfig, evaluate_labelled
    from annotator.jobs.progress import TaskState

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dino-model", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--references", type=int, default=5)
    ap.add_argument("--max-targets", type=int, default=None)
    ap.add_argument("--cache-dir", default="")
    ap.add_argument("--projects", nargs="+", default=list(PROJECTS))
    ap.add_argument("--rows", type=int, nargs="+", default=None, help="row indices to run")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--timing", action="store_true",
                    help="only the per-target cost of found boxes and prototypes")
    args = ap.parse_args()
    if args.timing:
        print(timing(args.dino_model, args.data, args.preset))
        return

    base = ProjectSettings(preset=args.preset, fusion="dino", dino_model=args.dino_model,
                           device="cpu", cache_dir=args.cache_dir)
    lines = [f"preset {args.preset}, DINOv2-S, {args.references} references, "
             f"{time.strftime('%Y-%m-%d')}", ""]
    for name in args.projects:
        project = import_dataset(args.data / name)
        lines += [f"### {name}", "",
                  "| settings | box@0.05 | box@0.1 | box@0.2 | image@0.1 | s/target |",
                  "|---|---|---|---|---|---|"]
        baselines = None
        for i, (label, changes, boxes) in enumerate(ROWS):
            if args.rows is not None and i not in args.rows:
                continue
            settings = replace(base, **changes)
            engine = build_engine(settings)
            config = LabelledEvalConfig(args.references, boxes, max_targets=args.max_targets)
            result = evaluate_labelled(project, engine, config, TaskState(), settings)
            s = result.scores["engine"]
            per = result.seconds / max(len(result.targets), 1)
            lines.append(f"| {label} | {s.pck(0.05):.1f} | {s.pck(0.1):.1f} | "
                         f"{s.pck(0.2):.1f} | {s.pck(0.1, 'image'):.1f} | {per:.2f} |")
            print(lines[-1], flush=True)
            baselines = result
        if baselines is not None:
            for m in ("box copy", "copy"):
                s = baselines.scores[m]
                lines.append(f"| baseline: {m} (label boxes) | {s.pck(0.05):.1f} | "
                             f"{s.pck(0.1):.1f} | {s.pck(0.2):.1f} | {s.pck(0.1, 'image'):.1f}"
                             " | - |")
            lines.append(f"\n{len(baselines.targets)} targets, {len(baselines.scores['engine'])}"
                         " labelled points\n")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")



def timing(dino_model: str, data: Path, preset: str, frames: int = 10) -> str:
    """Per-target cost of the found boxes and the prototype rule, features already cached
    (the matching work alone), against the feature extraction they rest on."""
    import numpy as np

    from annotator import references as rules
    from annotator.domain.project import ProjectSettings
    from annotator.features.crop import CropRect, ImageCrop, keypoint_box
    from annotator.io.formats import import_dataset
    from annotator.io.images import load_image
    from annotator.jobs.engine_factory import build_engine

    project = import_dataset(data / PROJECTS[0])
    paths = [r.path for r in project.images][:frames + 5]
    images = [load_image(Path(project.image_root) / p) for p in paths]
    labels = []
    for p in paths:
        inst = project.annotation(p).instances[0]
        labels.append(np.array([(k.x, k.y) for k in inst.keypoints], float))
    settings = ProjectSettings(preset=preset, fusion="dino", dino_model=dino_model,
                               device="cpu")
    engine = build_engine(settings, use_cache=False)
    refs, targets = images[:5], images[5:]
    h, w = refs[0].shape[:2]
    start = time.perf_counter()
    for im in targets:
        engine.features(im)
    extract = (time.perf_counter() - start) / len(targets)
    crops = [ImageCrop.of(im, CropRect.around(keypoint_box(pts), w, h, 0.15, min_side=64))
             for im, pts in zip(refs, labels)]
    ref_crops = [(c, c.rect.to_crop(pts), np.ones(len(pts), bool))
                 for c, pts in zip(crops, labels)]
    cached = build_engine(settings)  # memory cache: every later read is a hit
    for im in [*refs, *targets, *crops]:
        cached.features(im)
    search = rules.object_search(cached, [(im, [keypoint_box(p)]) for im, p in
                                          zip(refs, labels)])
    start = time.perf_counter()
    boxes = [rules.find_boxes(cached, search, im) for im in targets]
    find = (time.perf_counter() - start) / len(targets)
    target_crops = [ImageCrop.of(im, CropRect.around(b[0], w, h, 0.15)) for im, b in
                    zip(targets, boxes) if b]
    for c in target_crops:
        cached.features(c)
    start = time.perf_counter()
    protos = rules.build_prototypes(cached, ref_crops)
    build = time.perf_counter() - start
    start = time.perf_counter()
    for c in target_crops:
        rules.prototype_transfer(cached, protos, c, rules.PrototypeParams(0.05))
    proto_t = (time.perf_counter() - start) / max(len(target_crops), 1)
    start = time.perf_counter()
    refs_best = list(cached.iter_transfer(ref_crops, target_crops, flip=False))
    best = (time.perf_counter() - start) / max(len(refs_best), 1)
    return "\n".join([
        f"preset {preset}, DINOv2-S, CPU, {len(targets)} targets, 5 references:",
        f"- feature extraction, one whole image: {1000 * extract:.0f} ms",
        f"- finding the box (object score + regions, whole-image features cached): "
        f"{1000 * find:.1f} ms per target",
        f"- prototypes from 5 reference crops (cached): {1000 * build:.1f} ms once",
        f"- prototype transfer to a cached crop: {1000 * proto_t:.1f} ms per target",
        f"- most-confident-reference rule, 5 references, cached crop: {1000 * best:.1f} ms per "
        "target",
    ])


if __name__ == "__main__":
    main()
