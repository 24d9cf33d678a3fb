"""``annotator detect``: zero-shot boxes for every target image, written as COCO boxes to fill."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from annotator.cli.common import add_input_arguments
from annotator.domain.project import ProjectSettings


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = ProjectSettings()
    p = sub.add_parser(
        "detect",
        help="find the objects of every image with a text-prompted open-vocabulary detector",
        description="Runs a text-prompted open-vocabulary detector (OWLv2 from transformers) on "
        "every image that is neither reviewed nor a reference, and writes a COCO keypoint file "
        "in which each detection is an annotation with a bbox, a bbox_score and no labelled "
        "keypoint: a box to fill. `annotator propagate` on that file then predicts one "
        "instance per box. Earlier detections the user has not touched are replaced.",
    )
    add_input_arguments(p, "image folder (default: the COCO file's folder or the project's "
                           "root); images it holds that the input does not list are searched too")
    p.add_argument("--out", type=Path, required=True, help="COCO file to write")
    p.add_argument("--category", default=None, help="COCO category to use when several exist")
    p.add_argument("--model", default=None,
                   help=f"detector hub id or local folder (default: the project's setting, "
                        f"{d.detector_model}); safetensors only; HF_HUB_OFFLINE=1 for offline")
    p.add_argument("--prompt", default=None,
                   help="what to look for (default: the schema's category name)")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"minimum box score in [0, 1] (default {d.detect_threshold})")
    p.add_argument("--max-boxes", type=int, default=None,
                   help=f"at most this many boxes per image (default {d.detect_max_boxes})")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from annotator.cli.common import stopped, tqdm_task_state
    from annotator.cli.propagate import load_input
    from annotator.io.coco import ExportChoice, ExportScope, write_coco
    from annotator.io.video import ImageSource
    from annotator.jobs.detect import DetectRequest, apply_detections, build_detector, run_detection
    from annotator.jobs.engine_factory import model_load_error
    from annotator.jobs.progress import Cancelled

    ModelLoadError = model_load_error()

    project = load_input(args.input, args.images)
    overrides = {
        "detector_model": args.model, "detect_prompt": args.prompt,
        "detect_threshold": args.threshold, "detect_max_boxes": args.max_boxes,
        "device": args.device, "dtype": args.dtype,
    }
    try:
        settings = dataclasses.replace(
            project.settings, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    project.set_settings(settings)
    request = DetectRequest.from_project(project)
    try:
        detector = build_detector(settings)
    except (ModelLoadError, ValueError) as exc:
        print(f"cannot load the detector:\n{exc}", file=sys.stderr)
        return 2
    print(f"detecting '{request.prompt}' in {len(request.targets)} image(s) with "
          f"{settings.detector_model}")
    bar, state = tqdm_task_state(len(request.targets), "detect")
    results = []
    try:
        for res in run_detection(request, detector, state, ImageSource.of(project)):
            results.append(res)
    except (Cancelled, KeyboardInterrupt, ValueError) as exc:
        return stopped(bar, exc, "interrupted; nothing written")
    bar.close()
    apply_detections(project, results)
    # the detected boxes are unreviewed predictions: the file is for the next step
    # (propagate, review), so every image goes out
    write_coco(project, args.out, ExportChoice(ExportScope.PREDICTIONS))
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"skipped {r.path}: {r.error}", file=sys.stderr)
    boxes = sum(len(r.boxes) for r in results)
    print(f"wrote {args.out}: {boxes} box(es) in {len(results) - len(failed)} image(s), "
          f"{len(failed)} unreadable")
    return 0
