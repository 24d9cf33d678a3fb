"""``annotator extract``: fill the feature cache for every image of a folder or COCO file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from annotator.cli.cluster import Bar, add_ray_arguments, cluster_options, engine_factory
from annotator.cli.common import add_engine_arguments, engine_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="compute and cache the features of every image (locally or on a Ray cluster)",
        description="Computes the feature-cache entries of every image of a folder or a COCO "
        "file, so that later propagation and evaluation read them instead of running the "
        "models. Entries already cached are kept: an interrupted run started again only does "
        "the rest. With --ray the images are spread over Ray actors, one engine each; the "
        "cache folder must then be a path every node sees (shared file system).",
    )
    p.add_argument("images", type=Path, help="image folder, or COCO keypoint file")
    p.add_argument("--images", dest="image_root", type=Path, default=None,
                   help="COCO input: image folder (default: the COCO file's folder)")
    p.add_argument("--category", default=None, help="COCO category when several exist")
    add_engine_arguments(p)
    add_ray_arguments(p)
    p.set_defaults(func=run)


def list_inputs(source: Path, image_root: Path | None, category: str | None
                ) -> tuple[str, list[str], str]:
    """(absolute image root, relative image paths, category name: fills a "{category}"
    prompt as propagate does) of a folder or a COCO file."""
    from annotator.io.coco import CocoFormatError, import_coco
    from annotator.io.images import list_images

    if source.is_dir():
        return str(source.resolve()), list_images(source), ""
    if not source.is_file():
        raise SystemExit(f"{source}: no such folder or file")
    try:
        project = import_coco(source, image_root, category)
    except CocoFormatError as exc:
        raise SystemExit(str(exc)) from None
    return (str(Path(project.image_root).resolve()), [r.path for r in project.images],
            project.schema.name)


def run(args: argparse.Namespace) -> int:
    from annotator.jobs.batch import CACHED, FAILED, batches, extract_batch
    from annotator.jobs.engine_factory import model_load_error

    ModelLoadError = model_load_error()

    if args.no_cache:
        print("extract writes the feature cache: drop --no-cache", file=sys.stderr)
        return 2
    root, paths, category = list_inputs(args.images, args.image_root, args.category)
    engine = engine_from_args(args, category)  # checks the flags, claims the cache folder
    print(f"{len(paths)} image(s) under {root}")
    bar = Bar(len(paths), "extract")
    counts = {"computed": 0, CACHED: 0, FAILED: 0}
    errors = []

    def record(outcomes) -> None:
        for o in outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
            if o.status == FAILED:
                errors.append(o)
            bar.update(o.status != FAILED)

    try:
        if args.ray:
            from annotator.jobs.cluster import ClusterError, run_extract

            try:
                record(run_extract(paths, root, engine_factory(args, category),
                                           cluster_options(args)))
            except ClusterError as exc:
                bar.close()
                print(f"error: {exc}", file=sys.stderr)
                return 2
        else:
            for chunk in batches(paths, max(1, args.batch_size)):
                record(extract_batch(chunk, root, engine))
    except ModelLoadError as exc:
        bar.close()
        print(f"cannot load the models:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.close()
        print("interrupted; the entries written so far are kept", file=sys.stderr)
        return 130
    bar.close()
    for o in errors:
        print(f"failed {o.path}: {o.error}", file=sys.stderr)
    print(f"{counts['computed']} computed, {counts[CACHED]} already cached, "
          f"{counts[FAILED]} failed")
    return 1 if errors and not (counts["computed"] or counts[CACHED]) else 0
