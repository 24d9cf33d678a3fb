"""``annotator video``: projects from videos (frames picked uniformly or by k-means) and
video facts."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("video", help="projects from videos: pick the frames worth labelling",
                       description="Video recordings as a source of images. Frames are "
                       "decoded from the video on demand (nothing is extracted until export).")
    vsub = p.add_subparsers(dest="video_command", metavar="ACTION")
    f = vsub.add_parser(
        "frames", help="pick frames of one or more videos into a project",
        description="Picks --n frames of each video (k-means on grey thumbnails of a "
        "subsample, as DeepLabCut's kmeans extraction, or uniformly spaced) and writes a "
        "project file listing them, or adds them to an existing one with --add.")
    f.add_argument("videos", nargs="+", type=Path, help="video file(s)")
    f.add_argument("--pick", choices=("kmeans", "uniform"), default="kmeans")
    f.add_argument("--n", type=int, default=50, help="frames per video (default 50)")
    f.add_argument("--out", type=Path, required=True, help="project file (.kpproj or .kpproj.json)")
    f.add_argument("--add", action="store_true",
                   help="add the frames to the existing project --out")
    f.add_argument("--schema", default="quadruped",
                   help="keypoint schema: a template name or a JSON file of the template "
                        "format (default: quadruped)")
    f.add_argument("--max-samples", type=int, default=1000,
                   help="kmeans: frames sampled per video for clustering (default 1000)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--start", type=int, default=0, help="first frame considered")
    f.add_argument("--stop", type=int, default=None, help="frame after the last considered")
    f.set_defaults(func=run_frames)
    pr = vsub.add_parser(
        "propagate", help="predict every frame of a project's videos, chunk by chunk",
        description="Adds every frame of the project's videos (or --video) to the project and "
        "predicts the unlabelled ones in time order from the labelled frames, saving the "
        "project after each chunk: an interrupted run continues where it stopped when run "
        "again. --nearest K uses, for each frame, only the K references nearest in time.")
    pr.add_argument("input", type=Path, help="project file (.kpproj or .kpproj.json), "
                    "updated in place")
    pr.add_argument("--video", type=Path, action="append", default=None,
                    help="video to predict (repeatable; default: every video of the project)")
    add_video_propagate_arguments(pr)
    from annotator.cli.common import add_engine_arguments

    add_engine_arguments(pr)
    pr.set_defaults(func=run_propagate)
    i = vsub.add_parser("info", help="frame count, rate and size of videos")
    i.add_argument("videos", nargs="+", type=Path)
    i.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def add_video_propagate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of propagation along a video (``annotator video propagate`` and
    ``annotator propagate --video``)."""
    p.add_argument("--nearest", type=int, default=None,
                   help="video: references per frame, the K nearest in time (default: all)")
    p.add_argument("--chunk", type=int, default=64,
                   help="video: frames predicted between two saves of the project (64)")
    p.add_argument("--smooth", type=int, default=0, metavar="FRAMES",
                   help="video: median filter of predicted tracks over this many frames "
                        "(odd, >= 3; default 0: off)")


def _schema(text: str):  # noqa: ANN202
    from annotator.io.templates import load_template

    path = Path(text)
    if path.suffix.lower() == ".json" or path.is_file():
        return load_template(path.stem, path.parent)
    return load_template(text)


def run_info(args: argparse.Namespace) -> int:
    from annotator.io.video import VideoError, probe

    rc = 0
    for v in args.videos:
        try:
            info = probe(v)
        except VideoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            rc = 2
            continue
        print(f"{v}: {info.n_frames} frames, {info.fps:.3f} fps, {info.width} x {info.height}")
    return rc


def run_frames(args: argparse.Namespace) -> int:
    from annotator.domain.schema import SchemaError
    from annotator.io.project_file import (
        JSON_SUFFIX,
        PROJECT_SUFFIX,
        ProjectFileError,
        load_project,
        save_project,
    )
    from annotator.io.video import VideoError, add_video_frames, new_video_project
    from annotator.jobs.frame_pick import pick_frames

    if not args.out.name.endswith((PROJECT_SUFFIX, JSON_SUFFIX)):
        print(f"error: {args.out}: a project file name ends in {PROJECT_SUFFIX} (or "
              f"{JSON_SUFFIX} for a JSON document)", file=sys.stderr)
        return 2
    if args.add != args.out.exists():
        print(f"error: {args.out} " + ("does not exist (leave out --add to create it)"
                                       if args.add else "exists; choose a new file name or "
                                       "pass --add"), file=sys.stderr)
        return 2
    if args.n < 1:
        print("error: --n must be >= 1", file=sys.stderr)
        return 2
    try:
        project = load_project(args.out) if args.add else None
        schema = project.schema if project is not None else _schema(args.schema)
        picked = []
        for video in args.videos:
            t0 = time.perf_counter()
            frames = pick_frames(video, args.n, args.pick, args.max_samples, args.seed,
                                 args.start, args.stop)
            print(f"{video}: {len(frames)} frame(s) picked by {args.pick} in "
                  f"{time.perf_counter() - t0:.1f} s")
            picked.append((video, frames))
        if project is None:
            project = new_video_project(picked, schema)
        else:
            for video, frames in picked:
                add_video_frames(project, video, frames)
        save_project(project, args.out)
    except (VideoError, SchemaError, ProjectFileError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(project)} frame(s) from {len(args.videos)} video(s)")
    return 0


def run_propagate(args: argparse.Namespace) -> int:
    """Predict every frame of the project's videos (or ``args.video``), chunk by chunk,
    saving ``args.input`` after each; ``args.out`` (when set) gets a COCO file at the end.
    Shared by ``annotator video propagate`` and ``annotator propagate --video``."""
    from annotator.cli.common import engine_from_args, stopped, tqdm_task_state
    from annotator.jobs.engine_factory import model_load_error

    ModelLoadError = model_load_error()
    from annotator.io.project_file import ProjectFileError, load_project, save_project
    from annotator.io.video import VideoError, add_video_frames, video_path
    from annotator.jobs.progress import Cancelled
    from annotator.jobs.video_propagate import pending_frames, propagate_frames

    path = args.input
    if args.smooth and (args.smooth < 3 or args.smooth % 2 == 0):
        print(f"error: --smooth {args.smooth}: an odd number of frames >= 3 (0: off)",
              file=sys.stderr)
        return 2
    try:
        project = load_project(path)
        known = {str(video_path(project.image_root, r.video)): r.video
                 for r in project.images if r.video is not None}
        chosen = [v for v in args.video or [] if v is not None]  # None: a bare --video
        videos = [str(v.resolve()) for v in chosen] if chosen else list(known)
        if not videos:
            print(f"error: {path} has no video frames; name a video with --video VIDEO",
                  file=sys.stderr)
            return 2
        before = len(project)
        for v in videos:
            add_video_frames(project, v)
        if len(project) != before:
            save_project(project, path)
    except (ProjectFileError, VideoError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wanted = {r.video for r in project.images
              if r.video is not None and str(video_path(project.image_root, r.video)) in videos}
    targets = [p for p in pending_frames(project) if project.image(p).video in wanted]
    print(f"{len(targets)} frame(s) to predict, {len(project.reference_paths())} reference(s)")
    engine = engine_from_args(args, category=project.schema.name)
    bar, state = tqdm_task_state(len(targets), "propagate")
    failed = 0

    def save(done: int) -> None:
        save_project(project, path)

    try:
        for pred in propagate_frames(project, engine, state, targets, args.nearest,
                                     args.chunk, save, smooth=args.smooth):
            failed += bool(pred.error)
    except (ModelLoadError, Cancelled, KeyboardInterrupt, ValueError) as exc:
        return stopped(bar, exc, f"interrupted; predictions so far saved in {path}; run again "
                                 "to continue")
    bar.close()
    print(f"saved {path}: {len(targets) - failed} frame(s) predicted, "
          f"{failed} unreadable")
    if getattr(args, "out", None) is not None:
        from annotator.cli.export import choice_from_args
        from annotator.io.coco import write_coco

        choice = choice_from_args(args, project.settings.review_threshold)
        try:
            write_coco(project, args.out, choice)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.out}: contains {choice.describe()}")
    return 0
