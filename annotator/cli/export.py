"""``annotator export``: write a project's labels as a COCO keypoint file, saying which."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

INCLUDE_HELP = (
    "which labels to write: 'reviewed' = reviewed and reference images only (the images a "
    "person checked); 'predictions' = also every unreviewed prediction; 'confident' = also "
    "unreviewed predicted keypoints scored at or above --min-confidence (lower ones go out as "
    "not labelled). The choice is recorded in the file's info.annotator_export."
)


def add_include_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """``--include`` and ``--min-confidence`` (shared with ``annotator propagate``)."""
    p.add_argument("--include", choices=("reviewed", "predictions", "confident"),
                   default=default, help=f"{INCLUDE_HELP} Default: {default}.")
    p.add_argument("--min-confidence", type=float, default=None,
                   help="threshold for --include confident (default: the project's review "
                        "threshold)")


def choice_from_args(args: argparse.Namespace, review_threshold: float):  # noqa: ANN201
    """The :class:`~annotator.io.coco.ExportChoice` the arguments ask for."""
    from annotator.io.coco import ExportChoice, ExportScope

    if args.min_confidence is not None and args.include != "confident":
        raise SystemExit("--min-confidence applies only with --include confident")
    threshold = review_threshold if args.min_confidence is None else args.min_confidence
    try:
        return ExportChoice(ExportScope(args.include), float(threshold))
    except ValueError as exc:
        raise SystemExit(f"--min-confidence: {exc}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a project's labels as a COCO keypoint file",
        description="Writes a COCO keypoint file from a project file. By default only the "
        "images a person reviewed or made references go out; unreviewed predictions only on "
        "request (--include).",
    )
    p.add_argument("project", type=Path, help="project file (*.kpproj or *.kpproj.json)")
    p.add_argument("--out", type=Path, required=True, help="COCO file to write")
    add_include_arguments(p, "reviewed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from annotator.io.coco import CocoFormatError, write_coco
    from annotator.io.project_file import ProjectFileError, load_project

    try:
        project = load_project(args.project)
    except ProjectFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    choice = choice_from_args(args, project.settings.review_threshold)
    try:
        doc = write_coco(project, args.out, choice)
    except (OSError, CocoFormatError) as exc:
        print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(doc['images'])} image(s), {len(doc['annotations'])} "
          f"annotation(s); contains {choice.describe()}")
    return 0
