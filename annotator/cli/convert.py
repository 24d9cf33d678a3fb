"""``annotator convert``: a project or dataset to COCO, YOLO pose, DeepLabCut, SLEAP or
Label Studio."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from annotator.io.formats import FORMATS, INPUT_FORMATS

    p = sub.add_parser(
        "convert",
        help="export a project or dataset to COCO, YOLO pose, DeepLabCut, SLEAP or Label Studio",
        description="Reads a project file, a COCO keypoint file or a dataset in one of the other "
        "formats (YOLO pose data.yaml or folder, DeepLabCut config.yaml or CSV, SLEAP .slp, "
        "Label Studio JSON) and writes it in the format chosen with --to. By default only "
        "reviewed and reference images are written; --include-predictions adds images that "
        "are only predicted. SLEAP needs the optional sleap-io package "
        '(pip install "keypoint-annotator[formats]").',
    )
    p.add_argument("input", type=Path, help="project file, COCO file or dataset")
    p.add_argument("--to", required=True, choices=(*FORMATS, "project"),
                   help="output format; 'project' writes a project file to open in the app")
    p.add_argument("--out", type=Path, required=True,
                   help="output file (coco, sleap, label-studio, project) or new folder "
                        "(yolo-pose, dlc)")
    p.add_argument("--from", dest="source_format", choices=INPUT_FORMATS, default=None,
                   help="input format (default: detected from the name and content)")
    p.add_argument("--images", type=Path, default=None,
                   help="dataset folder for COCO, Label Studio, YOLO pose and SLEAP input "
                        "(default: the file's folder); nothing outside it is read or copied, "
                        "and SLEAP images are looked up in it by name")
    p.add_argument("--category", default=None,
                   help="COCO input with several keypoint categories: the one to convert "
                        "(its name or id)")
    p.add_argument("--include-predictions", action="store_true",
                   help="also write images whose keypoints are unreviewed predictions")
    p.add_argument("--min-confidence", type=float, default=None,
                   help="with --include-predictions: predicted keypoints below this "
                        "confidence are written as missing (not for coco)")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="yolo-pose: share of images in the val split (default 0: val is the "
                        "training set)")
    p.add_argument("--image-prefix", default="",
                   help="label-studio: prefix of the image paths in data.image, e.g. "
                        "/data/local-files/?d=photos/ (stripped again on import)")
    p.add_argument("--drop-occluded", action="store_true",
                   help="dlc: leave occluded points out (DLC has no occluded flag; by default "
                        "they are written as labelled)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from annotator.io.formats import ExportOptions, FormatError, export_project, import_dataset

    try:
        options = ExportOptions(
            include_predictions=args.include_predictions,
            min_confidence=args.min_confidence,
            val_fraction=args.val_fraction,
            image_prefix=args.image_prefix,
            drop_occluded=args.drop_occluded,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out.is_symlink():
        print(f"error: --out {args.out} is a symbolic link; give the real path (an export "
              "never writes through a link)", file=sys.stderr)
        return 2
    if args.out.resolve() == args.input.resolve():
        print(f"error: --out {args.out} is the input; write the conversion elsewhere",
              file=sys.stderr)
        return 2
    try:
        project = import_dataset(args.input, args.source_format, args.images, args.image_prefix,
                                 args.category)
        if args.to == "project":
            from annotator.io.project_file import JSON_SUFFIX, PROJECT_SUFFIX, save_project

            if not args.out.name.endswith((PROJECT_SUFFIX, JSON_SUFFIX)):
                print(f"error: {args.out}: a project file name ends in {PROJECT_SUFFIX} "
                      f"(or {JSON_SUFFIX} for a JSON document)", file=sys.stderr)
                return 2
            if args.out.exists():
                print(f"error: {args.out} exists; choose a new file name", file=sys.stderr)
                return 2
            save_project(project, args.out)
            n = sum(1 for r in project.images if project.annotation(r.path).has_labels)
            print(f"wrote {args.out}: {len(project)} image(s), {n} labelled")
            return 0
        report = export_project(project, args.to, args.out, options)
    except FormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
