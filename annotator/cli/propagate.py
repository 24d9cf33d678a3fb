"""``annotator propagate``: predict keypoints for every unlabelled image, write COCO."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from annotator.cli.cluster import add_ray_arguments
from annotator.cli.common import (
    add_engine_arguments,
    add_input_arguments,
    engine_from_args,
    settings_from_args,
    stopped,
    tqdm_task_state,
)
from annotator.cli.export import add_include_arguments, choice_from_args
from annotator.cli.video import add_video_propagate_arguments
from annotator.jobs.engine_factory import propagation_flip


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "propagate",
        help="transfer the labelled images' keypoints to every other image",
        description="Reads a project file or a COCO keypoint file whose labelled images are the "
        "references, predicts every other image of the folder and writes a COCO file whose "
        "predictions carry per-keypoint confidences (keypoint_scores). Features are cached on "
        "disk, so an interrupted run continues quickly. Instances: a target image with boxes (COCO "
        "annotations with a bbox and no labelled keypoint, e.g. a detector's output or "
        "`annotator detect`) gets one predicted instance per box, written as one annotation "
        "with that bbox; a target without boxes is predicted as a whole image.",
    )
    add_input_arguments(p, "image folder (COCO input: default the COCO file's folder; project "
                           "input: the project's image root). Images in it that the COCO file "
                           "does not list are added as targets.")
    p.add_argument("--out", type=Path, default=None,
                   help="COCO file to write (required, except with --video)")
    p.add_argument("--video", type=Path, nargs="?", action="append", default=None,
                   const=None, metavar="VIDEO",
                   help="predict every frame of the project's videos (VIDEO: only this one; "
                        "repeatable) in time order, saving the project file after each --chunk "
                        "of frames: an interrupted run continues when run again; --out then "
                        "also writes a COCO file at the end")
    add_video_propagate_arguments(p)
    p.add_argument("--category", default=None, help="COCO category to use when several exist")
    p.add_argument("--crop", choices=("bbox", "none"), default=None,
                   help="bbox (default): transfer between crops around the boxes; none: whole "
                        "images, each box keeping the points that fall in it")
    p.add_argument("--crop-margin", type=float, default=None,
                   help="crop = box enlarged by this fraction of its size per side (0.15)")
    add_include_arguments(p, "predictions")
    add_engine_arguments(p)
    add_ray_arguments(p)
    p.set_defaults(func=run)


def load_input(path: Path, images: Path | None):
    """A project from a project file or a COCO file (plus unlisted images of the folder)."""
    from annotator.domain.project import ImageRecord, Project
    from annotator.io.coco import CocoFormatError, import_coco
    from annotator.io.images import list_images
    from annotator.io.jsonio import InputFormatError, loads_strict
    from annotator.io.project_file import FORMAT_NAME, ProjectFileError, load_project
    from annotator.io.store import is_store

    try:
        head = {"format": FORMAT_NAME} if is_store(path) else loads_strict(path.read_bytes(),
                                                                          str(path))
    except FileNotFoundError:
        raise SystemExit(f"{path}: file not found") from None
    except OSError as exc:
        raise SystemExit(f"{path}: cannot be read ({exc})") from None
    except InputFormatError as exc:
        raise SystemExit(f"not a JSON file: {exc}") from None
    try:
        if isinstance(head, dict) and head.get("format") == FORMAT_NAME:
            project = load_project(path)
            if images is None:
                return project
            root = images
        else:
            project = import_coco(path, images)
            root = Path(project.image_root)
    except (ProjectFileError, CocoFormatError) as exc:
        raise SystemExit(str(exc)) from None
    try:
        listed = {r.path for r in project.images}
        extra = [ImageRecord(p) for p in list_images(root) if p not in listed]
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    return Project(
        str(root.resolve()), [*project.images, *extra], project.schema,
        project.annotations(), project.settings,
    )


def run(args: argparse.Namespace) -> int:
    from annotator.io.coco import write_coco
    from annotator.io.video import ImageSource
    from annotator.jobs.engine_factory import model_load_error
    from annotator.jobs.progress import Cancelled
    from annotator.jobs.propagate import PropagateRequest, apply_predictions, run_propagation

    ModelLoadError = model_load_error()

    if args.video is not None:  # the project itself is updated, chunk by chunk
        from annotator.cli.video import run_propagate

        if args.ray or args.images is not None:
            print("error: --video runs locally on the project's own videos (no --ray, "
                  "--images)", file=sys.stderr)
            return 2
        return run_propagate(args)
    if args.out is None:
        print("error: --out is required (the COCO file to write), except with --video",
              file=sys.stderr)
        return 2
    if args.out.exists() and args.input.exists() and os.path.samefile(args.out, args.input):
        print(f"--out {args.out} is the input file: it would be overwritten (and any other "
              "categories in it dropped); choose another output file", file=sys.stderr)
        return 2
    project = load_input(args.input, args.images)
    choice = choice_from_args(args, project.settings.review_threshold)
    engine = engine_from_args(args, category=project.schema.name)
    crop = {k: v for k, v in (("crop", args.crop), ("crop_margin", args.crop_margin))
            if v is not None}
    if crop:
        try:
            project.set_settings(dataclasses.replace(project.settings, **crop))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    request = PropagateRequest.from_project(project)
    # flip: --flip/--no-flip, else the --preset's own rule (annotator.jobs.engine_factory:
    # geoaware flips, diy does not), else the project's setting
    if args.flip is not None or args.preset:
        use_flip = propagation_flip(settings_from_args(args)[0])
        flip = project.schema.flip_pairs if use_flip else ()
        request = dataclasses.replace(  # keeps the target boxes
            request, flip_pairs=tuple(flip),
            settings=dataclasses.replace(request.settings, flip=use_flip))
    if not request.references:
        print(f"{args.input}: no labelled image to use as a reference", file=sys.stderr)
        return 2
    print(f"{len(request.references)} reference(s), {len(request.targets)} target(s), "
          f"{len(project.schema)} keypoints")
    bar, state = tqdm_task_state(len(request.targets), "propagate")
    predictions, failed = [], []
    try:
        if args.ray:  # the same batch code on Ray actors; predictions stream back here
            from annotator.cli.cluster import cluster_ray_predictions

            stream = cluster_ray_predictions(args, request, bar, project.schema.name)
        else:
            from annotator.jobs.train import head_for_propagation

            head = head_for_propagation(project, engine)
            if head is not None:
                print(f"learned head: trained on {head.meta.get('num_images')} reviewed images")
            stream = run_propagation(request, engine, state, ImageSource.of(project), head)
        for pred in stream:
            (failed if pred.error else predictions).append(pred)
    except (Cancelled, KeyboardInterrupt):
        bar.close()
        try:  # keep what is done: a second Ctrl-C during this write stops it
            apply_predictions(project, predictions)
            write_coco(project, args.out, choice)
        except (OSError, ValueError) as exc:
            print(f"interrupted; the {len(predictions)} prediction(s) made could not be "
                  f"written ({exc})", file=sys.stderr)
            return 130
        print(f"interrupted after {len(predictions) + len(failed)} of {len(request.targets)} "
              f"image(s): wrote the {len(predictions)} prediction(s) made so far to "
              f"{args.out}; features computed so far are cached", file=sys.stderr)
        return 130
    except (ModelLoadError, ValueError) as exc:
        return stopped(bar, exc, "")
    bar.close()
    apply_predictions(project, predictions)
    write_coco(project, args.out, choice)
    for pred in failed:
        print(f"skipped {pred.path}: {pred.error}", file=sys.stderr)
    print(f"wrote {args.out}: {len(predictions)} image(s) predicted, {len(failed)} unreadable; "
          f"contains {choice.describe()}")
    stats = None if args.ray else engine.cache_stats()
    if stats is not None:
        print(f"feature cache: {stats.hits} hit(s) ({stats.disk_hits} from disk, "
              f"{stats.memory_hits} from memory), {stats.misses} computed; "
              f"{stats.disk_entries} entries, {stats.disk_bytes / 1e6:.1f} MB on disk")
    return 0
