"""Exports and imports of video projects, around :mod:`annotator.io.formats`.

The format writers copy image files; a video frame has none until it is exported. So
:func:`materialized` decodes the exported frames into PNG files at their listed paths
(``<video stem>/img<frame>.png``) and hands the writers a plain project over them:

- DeepLabCut: ``labeled-data/<video stem>/img<frame>.png`` and ``CollectedData_*.csv``
  (plus ``.h5`` when PyTables is installed), with the real video in ``video_sets``;
- SLEAP: video-backed labels (each labelled frame refers to its video and frame index;
  nothing extracted), read back by :func:`read_sleap_video` into a video project;
- COCO and Label Studio: the frames are written beside the output file at their listed
  paths (the output's ``file_name`` / image paths are relative to its folder);
- YOLO pose: frames copied into the dataset as the writer does for images.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from annotator.domain.annotation import ImageAnnotation, Keypoint, Origin
from annotator.domain.project import ImageRecord, Project
from annotator.io.formats._common import (
    DEFAULT_EXPORT,
    ExportOptions,
    ExportReport,
    FormatError,
    Phase,
    ProgressFn,
    exported_statuses,
    imported_status,
    require_sleap_io,
    require_yaml,
    staged_file,
)
from annotator.io.formats.sleap import from_sleap, load_labels, skeleton, to_sleap
from annotator.io.images import resolve_image_path
from annotator.io.video import (
    VideoError,
    VideoInfo,
    extract_frames,
    frame_name,
    probe,
    video_path,
)

log = logging.getLogger(__name__)


def has_video(project: Project) -> bool:
    return any(r.video is not None for r in project.images)


def _exported_records(project: Project, options: ExportOptions) -> list[ImageRecord]:
    wanted = exported_statuses(options)
    return [r for r in project.images if project.annotation(r.path).status in wanted]


def _plain_project(project: Project, root: Path, records: list[ImageRecord]) -> Project:
    anns = project.annotations()
    plain = [ImageRecord(r.path, r.width, r.height) for r in records]
    return Project(str(root), plain, project.schema,
                   {r.path: anns[r.path] for r in records if r.path in anns}, project.settings)


@contextmanager
def materialized(project: Project, options: ExportOptions = DEFAULT_EXPORT,
                 root: Path | None = None) -> Iterator[Project]:
    """A plain project over the images an export writes, video frames decoded to PNG files
    at their listed paths under ``root`` (default: a temporary folder, removed afterwards;
    other images are linked there). Errors name the video."""
    records = _exported_records(project, options)
    temporary = root is None
    base = Path(tempfile.mkdtemp(prefix="annotator-frames-")) if root is None else Path(root)
    try:
        try:
            extract_frames(project.image_root, records, base)
        except VideoError as exc:
            raise FormatError(f"cannot export video frames: {exc}") from None
        for r in records:
            if r.video is None:
                target = base / r.path
                if temporary:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(resolve_image_path(project.image_root, r.path), target)
                elif not target.exists():
                    raise FormatError(f"image {r.path!r} is not under {base}; export the "
                                      "video frames and the images separately")
        yield _plain_project(project, base, records)
    finally:
        if temporary:
            shutil.rmtree(base, ignore_errors=True)


def _videos(project: Project) -> dict[str, str]:
    """Video stem -> absolute video path, for the project's videos."""
    return {Path(r.video).stem: str(video_path(project.image_root, r.video))
            for r in project.images if r.video is not None}


def write_dlc_video(project: Project, out: str | Path,
                    options: ExportOptions = DEFAULT_EXPORT,
                    progress: ProgressFn | None = None) -> ExportReport:
    """A DeepLabCut project from a video project: ``labeled-data/<video stem>/imgNNNN.png``
    (frame numbers in the names), ``CollectedData`` CSV (and H5 with PyTables) and the real
    videos in ``config.yaml``'s ``video_sets``."""
    from annotator.io.formats.dlc import write_dlc

    out = Path(out)
    with materialized(project, options) as plain:
        report = write_dlc(plain, out, options, progress)
    yaml = require_yaml()
    config_path = out / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    videos = _videos(project)
    sizes = {Path(r.video).stem: (r.width, r.height) for r in project.images
             if r.video is not None and r.width}
    sets: dict[str, Any] = {}
    for key, value in (config.get("video_sets") or {}).items():
        stem = Path(key).stem
        if stem in videos:
            w, h = sizes.get(stem, (None, None))
            sets[videos[stem]] = {"crop": f"0, {w}, 0, {h}"} if w else value
        else:
            sets[key] = value
    config["video_sets"] = sets
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True,
                                          default_flow_style=None), encoding="utf-8")
    notes = list(report.notes)
    written = write_dlc_h5(out)
    if not written:
        notes.append("no CollectedData .h5 written (needs PyTables); "
                     "deeplabcut.convertcsv2h5 makes it")
    return replace(report, notes=tuple(notes))


def write_dlc_h5(out: Path) -> list[Path]:
    """``CollectedData_*.h5`` beside each CSV of a DLC export, as DeepLabCut writes them
    (key ``df_with_missing``); nothing when pandas or PyTables is missing."""
    try:
        import pandas as pd
        import tables  # noqa: F401  (pandas' HDF5 writer)
    except ImportError:
        return []
    written = []
    for csv_path in sorted(out.glob("labeled-data/*/CollectedData_*.csv")):
        with open(csv_path, encoding="utf-8") as f:
            n_header = 4 if f.readlines()[1].startswith("individuals") else 3
        df = pd.read_csv(csv_path, header=list(range(n_header)), index_col=[0, 1, 2])
        h5 = csv_path.with_suffix(".h5")
        df.to_hdf(h5, key="df_with_missing", mode="w")
        written.append(h5)
    return written


# ------------------------------------------------------------------- SLEAP
def write_sleap_video(project: Project, out: str | Path,
                      options: ExportOptions = DEFAULT_EXPORT,
                      progress: ProgressFn | None = None) -> ExportReport:
    """A SLEAP labels file whose labelled frames refer to the videos by frame index (other
    images as one-frame image videos); nothing is extracted."""
    sio = require_sleap_io()
    import numpy as np

    out = Path(out)
    if out.suffix != ".slp":
        raise FormatError(f"{out}: a SLEAP labels file must end in .slp")
    sk = skeleton(sio, project.schema)
    videos: dict[str, Any] = {}
    frames, n_inst = [], 0
    records = _exported_records(project, options)
    step = Phase(progress, len(records))
    for i, r in enumerate(records):
        step(i)
        if r.video is not None:
            key = str(video_path(project.image_root, r.video))
            if key not in videos:
                meta = {}
                infos = [q for q in project.images if q.video == r.video and q.width]
                try:
                    n = probe(key).n_frames
                except VideoError:
                    n = max(int(q.frame or 0) for q in project.images if q.video == r.video) + 1
                if infos:
                    meta = {"shape": (n, infos[0].height, infos[0].width, 3)}
                videos[key] = sio.Video(filename=key, open_backend=False, backend_metadata=meta)
            video, idx = videos[key], int(r.frame or 0)
        else:
            key = str(resolve_image_path(project.image_root, r.path))
            video = videos.setdefault(key, sio.Video(filename=key, open_backend=False))
            idx = 0
        min_conf = options.min_confidence
        insts = []
        for inst in project.annotation(r.path).instances:
            if min_conf is not None:
                inst = replace(inst, keypoints=tuple(
                    Keypoint() if kp.origin == Origin.PREDICTED and kp.labelled
                    and (kp.confidence is None or kp.confidence < min_conf) else kp
                    for kp in inst.keypoints))
            if inst.num_labelled:
                insts.append(to_sleap(sio, np, inst, sk))
        n_inst += len(insts)
        frames.append(sio.LabeledFrame(video=video, frame_idx=idx, instances=insts))
    labels = sio.Labels(labeled_frames=frames, videos=list(videos.values()), skeletons=[sk])
    step(len(records))
    try:
        with staged_file(out) as stage:
            sio.save_slp(labels, str(stage), embed=False, verbose=False)
    except (OSError, ValueError) as exc:
        raise FormatError(f"{out}: cannot be written ({exc})") from None
    return ExportReport(out, len(frames), n_inst)


def read_sleap_video(path: str | Path) -> Project:
    """A video project from a video-backed SLEAP labels file: one image record per labelled
    (video, frame), decoded on demand; the image root is the folder holding the videos. A
    missing video still gives the project (its frames then show as unreadable)."""
    sio = require_sleap_io()
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    labels, schema = load_labels(sio, path)
    entries = []
    for lf in labels.labeled_frames:
        if isinstance(lf.video.filename, list):
            raise FormatError(f"{path}: image-sequence videos are read by the SLEAP import")
        video = Path(lf.video.filename)
        if not video.is_absolute():
            video = path.parent / video
        entries.append((Path(os.path.abspath(video)), int(lf.frame_idx), lf))
    if not entries:
        raise FormatError(f"{path}: no labelled frames")
    root = Path(os.path.commonpath([str(v.parent) for v, _, _ in entries]))
    infos: dict[Path, VideoInfo | None] = {}
    records, anns = [], {}
    for video, idx, lf in entries:
        if video not in infos:
            try:
                infos[video] = probe(video)
            except VideoError as exc:
                log.warning("%s: %s; its frames show as unreadable", path, exc)
                infos[video] = None
        info = infos[video]
        shape = lf.video.backend_metadata.get("shape")
        n = info.n_frames if info else int(shape[0]) if shape else idx + 1
        w, h = (info.width, info.height) if info else \
            ((int(shape[2]), int(shape[1])) if shape and len(shape) >= 3 else (None, None))
        rel = video.relative_to(root).as_posix()
        name = frame_name(video, idx, n)
        if name in anns:
            raise FormatError(f"{path}: frame {idx} of {video} is listed twice")
        time_s = round(info.time_of(idx), 6) if info else None
        records.append(ImageRecord(name, w, h, video=rel, frame=idx, time_s=time_s))
        where = f"{path}: frame {idx} of {video}"
        insts = tuple(i for i in (from_sleap(i, len(schema), where) for i in lf.instances)
                      if i.num_labelled)
        anns[name] = ImageAnnotation(insts, imported_status(insts))
    order = sorted(range(len(records)), key=lambda i: (records[i].video, records[i].frame))
    project = Project(str(root), [records[i] for i in order], schema, anns)
    return project


# -------------------------------------------------------------- DLC import
_DLC_FRAME = re.compile(r"labeled-data/(?P<stem>[^/]+)/img(?P<frame>\d+)\.png")


def dlc_video_frames(project: Project) -> Project:
    """An imported DeepLabCut project whose ``labeled-data/<video stem>/imgNNNN.png``
    frames come from a video named in its ``config.yaml`` ``video_sets`` that exists:
    those frames become video frames again (decoded on demand, as a video project lists
    them); any other image stays a plain image, and without such a video the project is
    returned as read."""
    from annotator.io.formats.dlc import _read_config
    from annotator.io.video import frame_records

    root = Path(project.image_root)
    cfg = root / "config.yaml"
    if not any(_DLC_FRAME.fullmatch(r.path) for r in project.images) or not cfg.is_file():
        return project
    try:
        video_sets = _read_config(cfg, root).get("video_sets") or {}
    except FormatError:
        return project
    videos: dict[str, tuple[str, VideoInfo]] = {}
    for name in video_sets if isinstance(video_sets, dict) else ():
        full = Path(str(name)) if Path(str(name)).is_absolute() else root / str(name)
        try:
            videos.setdefault(full.stem, (str(full), probe(full)))
        except VideoError as exc:
            log.info("DLC import: %s; its frames stay images", exc)
    if not videos:
        return project
    listed = {r.path for r in project.images}
    records, renamed = [], {}
    for r in project.images:
        m = _DLC_FRAME.fullmatch(r.path)
        video = videos.get(m["stem"]) if m else None
        if m is None or video is None or not int(m["frame"]) < video[1].n_frames:
            records.append(r)
            continue
        rec = frame_records(root, video[0], [int(m["frame"])], video[1])[0]
        if rec.path in listed or rec.path in renamed.values():
            records.append(r)
            continue
        renamed[r.path] = rec.path
        records.append(rec)
    if not renamed:
        return project
    anns = {renamed.get(p, p): a for p, a in project.annotations().items()}
    log.info("DLC import: %d frame(s) read from their videos", len(renamed))
    return Project(project.image_root, records, project.schema, anns, project.settings)


# ------------------------------------------------------------------- COCO
def write_coco_with_frames(source: Any, path: str | os.PathLike[str], choice: Any = None,
                           progress: Any = None) -> tuple[int, int]:
    """:func:`annotator.io.coco.write_coco_text` of a snapshot (``CocoSource``) or project
    whose video frames the file lists are first decoded to PNG files beside it at their
    listed paths, as Export as writes COCO (``file_name`` relative to the file's folder);
    the GUI's Export COCO runs it on a pool thread. Returns (images, annotations). The file is
    streamed entry by entry into a staged file, renamed into place once the frames are out."""
    from annotator.io.coco import write_coco_text

    names: list[str] = []

    def frames() -> None:
        if not any(r.video is not None for r in source.images):
            return
        listed = set(names)
        records = [r for r in source.images if r.path in listed]
        base = Path(path).parent
        for r in records:
            if r.video is None and not (base / r.path).exists():
                raise FormatError(f"image {r.path!r} is not under {base}; export the video "
                                  "frames and the images separately")
        try:
            extract_frames(source.image_root, [r for r in records if r.video is not None],
                           base)
        except VideoError as exc:
            raise FormatError(f"cannot export video frames: {exc}") from None

    return write_coco_text(source, path, choice, progress, names, before_rename=frames)


# ---------------------------------------------------------------- dispatch
def export_video_project(project: Project, fmt: str, out: str | Path,
                         options: ExportOptions = DEFAULT_EXPORT,
                         progress: ProgressFn | None = None) -> ExportReport:
    """:func:`annotator.io.formats.export_project` for a project with video frames."""
    from annotator.io.formats import export_project

    out = Path(out)
    if fmt == "dlc":
        return write_dlc_video(project, out, options, progress)
    if fmt == "sleap":
        return write_sleap_video(project, out, options, progress)
    if fmt in ("coco", "label-studio"):  # image paths relative to the output's folder
        out.parent.mkdir(parents=True, exist_ok=True)
        with materialized(project, options, root=out.parent) as plain:
            return export_project(plain, fmt, out, options, progress)
    with materialized(project, options) as plain:
        return export_project(plain, fmt, out, options, progress)


def is_video_slp(path: str | Path) -> bool:
    """Whether a SLEAP labels file has labelled frames in video files (not images)."""
    from annotator.io.video import VIDEO_EXTENSIONS

    sio = require_sleap_io()
    try:
        labels = sio.load_slp(str(path), open_videos=False)
    except Exception:  # the regular reader names the problem
        return False
    return any(isinstance(v.filename, str) and Path(v.filename).suffix.lower()
               in VIDEO_EXTENSIONS for v in labels.videos)
