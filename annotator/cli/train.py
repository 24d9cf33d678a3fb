"""``annotator train``: train the project's keypoint head on its reviewed images."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from annotator.cli.common import add_engine_arguments, add_input_arguments, engine_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the project's keypoint head on its reviewed images (seconds, CPU)",
        description="Learns a small per-keypoint model (a head on the frozen features) from "
        "every labelled instance of the reviewed and reference images: each is cropped around "
        "its box (else its labelled keypoints) with the crop margin, featurized through the "
        "feature cache (only new images cost an extraction) and the head is trained and saved "
        "beside the feature cache folder, keyed by the project and the feature settings. "
        "Needs a fusion that describes each image on its own (--fusion dino or concat; copca "
        "is per pair). Predictions use the head once it learned from enough images "
        "(--min-images).",
    )
    add_input_arguments(p, "image folder (default: the project's image root / the COCO "
                           "file's folder)", "project",
                        "project file (*.kpproj.json) or COCO keypoint file")
    p.add_argument("--kind", choices=("mlp", "linear", "prototype"), default=None,
                   help="head: mlp (default, the best measured), linear (1x1 convolution) or "
                        "prototype (mean descriptor per keypoint, no training)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 300)")
    p.add_argument("--flip-augment", action="store_true",
                   help="also train on mirrored crops, partners swapped (needs the schema's flip "
                        "pairs; measured to cost accuracy on the fixtures)")
    p.add_argument("--min-images", type=int, default=None,
                   help="images needed before predictions use the head (default 3, "
                        "annotator.jobs.train.MIN_TRAINING_IMAGES: where it measured better "
                        "than zero-shot transfer)")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from annotator.cli.common import stopped, tqdm_task_state
    from annotator.cli.propagate import load_input
    from annotator.jobs.engine_factory import model_load_error

    ModelLoadError = model_load_error()
    from annotator.jobs import train as tj
    from annotator.jobs.progress import Cancelled
    from annotator.matching.head import HeadParams

    project = load_input(args.project, args.images)
    if args.cache_dir:  # heads live beside the feature cache folder used
        project.set_settings(dataclasses.replace(project.settings, cache_dir=args.cache_dir))
    overrides = {k: v for k, v in (("kind", args.kind), ("steps", args.steps)) if v is not None}
    if args.flip_augment:
        overrides["flip"] = True
    try:
        params = HeadParams(**overrides)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    min_images = tj.MIN_TRAINING_IMAGES if args.min_images is None else args.min_images
    engine = engine_from_args(args, category=project.schema.name)
    request = tj.TrainRequest.from_project(project, params)
    if not request.samples:
        print(f"{args.project}: no reviewed or reference image with labelled keypoints to train "
              "on", file=sys.stderr)
        return 2
    print(f"{len(request.images)} image(s), {len(request.samples)} labelled instance(s), "
          f"{len(project.schema)} keypoints; head: {params.kind}")
    bar, state = tqdm_task_state(len(request.images), "features")
    try:
        result = tj.run_training(request, engine, state)
    except (ModelLoadError, Cancelled, KeyboardInterrupt, ValueError) as exc:
        # ValueError: TrainingError and bad inputs
        return stopped(bar, exc, "interrupted: nothing saved; features computed so far are "
                                 "cached")
    bar.close()
    for line in result.skipped:
        print(f"skipped {line}", file=sys.stderr)
    try:
        path = tj.save_project_head(project, engine, result)
    except OSError as exc:
        print(f"error: cannot save the head: {exc}", file=sys.stderr)
        return 2
    n = len(result.images)
    print(f"features {result.feature_seconds:.1f} s, training {result.train_seconds:.2f} s on "
          f"{n} image(s) ({result.instances} crop(s))")
    print(f"saved {path}")
    if n < min_images:
        print(f"note: predictions use the head from {min_images} reviewed images on "
              f"({n} now)")
    return 0
