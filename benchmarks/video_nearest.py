"""References nearest in time vs all references, on labelled frames treated as a sequence.

    python benchmarks/video_nearest.py --dino-model ../shared/fixtures/dinov2-small \
        --project ../shared/fixtures/dlc-examples/openfield-Pranav-2018-10-30 --preset fast

The labelled frames of a DeepLabCut project, in file order, stand for a video. k references
spread over them; every other frame is predicted (annotator.jobs.eval_labelled, the product's
propagation) from (a) all k references and (b) only the n references nearest in time to it.
PCK@0.1 of the keypoint box, boxes found from the references (the default).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    from annotator.domain.project import ProjectSettings
    from annotator.io.formats import import_dataset
    from annotator.jobs.engine_factory import build_engine
    from annotator.jobs.eval_labelled import (
        KeypointScores,
        LabelledEvalConfig,
        evaluate_labelled,
        labelled_instances,
        pick_references,
    )
    from annotator.jobs.progress import TaskState

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dino-model", required=True)
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--references", type=int, default=10)
    ap.add_argument("--nearest", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--targets", type=int, default=30)
    ap.add_argument("--boxes", default="auto")
    ap.add_argument("--cache-dir", default="")
    args = ap.parse_args()

    project = import_dataset(args.project)
    settings = ProjectSettings(preset=args.preset, fusion="dino", dino_model=args.dino_model,
                               device="cpu", cache_dir=args.cache_dir)
    engine = build_engine(settings)
    labelled = [r.path for r in project.images if labelled_instances(project, r.path)]
    refs = pick_references(labelled, args.references)
    rest = [p for p in labelled if p not in refs]
    targets = [rest[int((i + 0.5) * len(rest) / args.targets)] for i in range(args.targets)]
    order = {p: i for i, p in enumerate(labelled)}

    def merged(runs: list) -> KeypointScores:
        out = KeypointScores()
        for r in runs:
            s = r.scores["engine"]
            for e, b, im, k, c in zip(s.errors, s.box_side, s.image_side, s.keypoint,
                                      s.confidence):
                out.add(e, b, im, k, c)
        return out

    rows = []
    start = time.perf_counter()
    # the same targets (evaluate_labelled spreads max_targets over the rest alike)
    everything = evaluate_labelled(
        project, engine, LabelledEvalConfig(tuple(refs), args.boxes, max_targets=args.targets),
        TaskState(), settings)
    assert list(everything.targets) == targets
    all_runs = everything.scores["engine"]
    rows.append((f"all {len(refs)} references", all_runs))
    for n in args.nearest:
        runs = []
        for path in targets:
            near = sorted(refs, key=lambda r: (abs(order[r] - order[path]), order[r]))[:n]
            one = LabelledEvalConfig(tuple(near), args.boxes)
            res = evaluate_labelled(_only(project, path, near), engine, one, TaskState(),
                                    settings)
            runs.append(res)
        rows.append((f"{n} nearest in time", merged(runs)))
    took = time.perf_counter() - start
    print(f"{args.project.name}: preset {args.preset}, {len(refs)} references, "
          f"{len(targets)} targets, boxes {args.boxes}, {time.strftime('%Y-%m-%d')}, "
          f"{took:.0f} s\n")
    print("| references used per frame | PCK@0.05 box | PCK@0.1 box | PCK@0.2 box | "
          "PCK@0.1 image |")
    print("|---|---|---|---|---|")
    for name, sc in rows:
        print(f"| {name} | {sc.pck(0.05):.1f} | {sc.pck(0.1):.1f} | {sc.pck(0.2):.1f} | "
              f"{sc.pck(0.1, 'image'):.1f} |")


def _only(project, target, refs):  # noqa: ANN001, ANN202
    """A copy of ``project`` whose labelled images are the references and ``target`` only."""
    from annotator.domain.annotation import ImageAnnotation
    from annotator.domain.project import Project

    keep = set(refs) | {target}
    anns = {p: (a if p in keep else ImageAnnotation())
            for p, a in project.annotations().items()}
    return Project(project.image_root, project.images, project.schema, anns, project.settings)


if __name__ == "__main__":
    main()
