"""``annotator propagate``: predict keypoints for every unlabelled image, write COCO."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from annotator.cli.common import add_engine_arguments, engine_from_args
from annotator.cli.export import add_include_arguments, choice_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "propagate",
        help="transfer the labelled images' keypoints to every other image",
        description="Reads a project file or a COCO keypoint file whose labelled images are the "
        "references, predicts every other image of the folder and writes a COCO file whose "
        "predictions carry per-keypoint confidences (keypoint_scores). Features are cached on "
        "disk, so an interrupted run continues quickly.",
    )
    p.add_argument("input", type=Path, help="project file (*.kpproj.json) or COCO keypoint file")
    p.add_argument("--images", type=Path, default=None,
                   help="image folder (COCO input: default the COCO file's folder; project input: "
                        "the project's image root). Images in it that the COCO file does not "
                        "list are added as targets.")
    p.add_argument("--out", type=Path, required=True, help="COCO file to write")
    p.add_argument("--category", default=None, help="COCO category to use when several exist")
    add_include_arguments(p, "predictions")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def load_input(path: Path, images: Path | None):
    """A project from a project file or a COCO file (plus unlisted images of the folder)."""
    from annotator.domain.project import ImageRecord, Project
    from annotator.io.coco import CocoFormatError, import_coco
    from annotator.io.images import list_images
    from annotator.io.project_file import FORMAT_NAME, ProjectFileError, load_project

    try:
        head = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: not a JSON file ({exc})") from None
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
    from tqdm import tqdm

    from annotator.features.models import ModelLoadError
    from annotator.io.coco import write_coco
    from annotator.jobs.progress import Cancelled, TaskState
    from annotator.jobs.propagate import PropagateRequest, apply_predictions, run_propagation

    project = load_input(args.input, args.images)
    choice = choice_from_args(args, project.settings.review_threshold)
    engine = engine_from_args(args)
    request = PropagateRequest.from_project(project)
    if args.flip is not None:
        flip = project.schema.flip_pairs if args.flip else ()
        request = PropagateRequest(request.image_root, request.references, request.targets, flip,
                                   request.settings)
    if not request.references:
        print(f"{args.input}: no labelled image to use as a reference", file=sys.stderr)
        return 2
    print(f"{len(request.references)} reference(s), {len(request.targets)} target(s), "
          f"{len(project.schema)} keypoints")
    bar = tqdm(total=len(request.targets), unit="img", desc="propagate")

    def on_progress(p) -> None:
        bar.n = p.done
        bar.refresh()

    state = TaskState(on_progress)
    predictions, failed = [], []
    try:
        for pred in run_propagation(request, engine, state):
            (failed if pred.error else predictions).append(pred)
    except ModelLoadError as exc:
        bar.close()
        print(f"cannot load the models:\n{exc}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        bar.close()
        print("interrupted; features computed so far are cached", file=sys.stderr)
        return 130
    except ValueError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    apply_predictions(project, predictions)
    write_coco(project, args.out, choice)
    for pred in failed:
        print(f"skipped {pred.path}: {pred.error}", file=sys.stderr)
    print(f"wrote {args.out}: {len(predictions)} image(s) predicted, {len(failed)} unreadable; "
          f"contains {choice.describe()}")
    stats = engine.cache_stats()
    if stats is not None:
        print(f"feature cache: {stats.hits} hit(s) ({stats.disk_hits} from disk, "
              f"{stats.memory_hits} from memory), {stats.misses} computed; "
              f"{stats.disk_entries} entries, {stats.disk_bytes / 1e6:.1f} MB on disk")
    return 0
