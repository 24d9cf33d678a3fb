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
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
