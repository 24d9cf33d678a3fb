"""Videos as an image source: probing, accurate frame decoding by index (OpenCV), the
synthetic frame names of video-backed image records, and :class:`ImageSource`, the loader
built from a project that decodes a listed frame on demand.

A frame of a video is an :class:`~annotator.domain.project.ImageRecord` whose ``path`` is
``<video stem>/img<frame>.png`` (the name a DeepLabCut export gives it) and whose ``video`` /
``frame`` / ``time_s`` say where it comes from. Nothing is extracted to disk: an
:class:`ImageSource` of the project decodes the frame when its listed path is loaded.
Readers are kept per thread (OpenCV captures are not thread-safe); sequential and short
forward reads avoid seeking.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from annotator.domain.project import ImageRecord, Project
from annotator.io.images import (
    ImageLoadError,
    load_image,
    load_listed,
    load_thumbnail,
    read_size,
)

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg",
                              ".wmv", ".webm", ".h264"})
#: a forward jump up to this many frames decodes through (about 2 ms a frame) instead of
#: seeking (about 70 ms for a 640 x 480 H.264 stream)
FORWARD_DECODE_LIMIT = 30


class VideoError(ImageLoadError):
    """A video is missing, unreadable or has no such frame; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds: frame count, rate (frames per second) and frame size."""

    path: str
    n_frames: int
    fps: float
    width: int
    height: int

    def time_of(self, frame: int) -> float:
        """Timestamp in seconds of ``frame`` (constant frame rate)."""
        return frame / self.fps if self.fps > 0 else 0.0


def _cv2() -> Any:
    import cv2

    return cv2


def frame_digits(n_frames: int) -> int:
    """Digits of the frame number in the file names (DeepLabCut's rule: enough for
    ``n_frames``, at least one)."""
    return max(1, int(math.ceil(math.log10(max(n_frames, 1)))))


def frame_name(video: str | os.PathLike[str], frame: int, n_frames: int) -> str:
    """The synthetic relative path of ``frame``: ``<video stem>/img<frame>.png``."""
    return f"{Path(video).stem}/img{frame:0{frame_digits(n_frames)}d}.png"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"video {path}: file not found")
    if not path.is_file():
        raise VideoError(f"video {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise VideoError(f"video {path}: cannot be read (permission denied)")


class VideoReader:
    """One open video; :meth:`read` returns frame N (RGB uint8) exactly as the N-th frame of
    a sequential read. Not thread-safe: use one per thread (:func:`read_frame` does)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        _check_file(self.path)
        cv2 = _cv2()
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise VideoError(f"video {self.path}: cannot be opened (not a video, or a codec "
                             "OpenCV's FFmpeg cannot decode)")
        n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        w = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        h = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if n <= 0 or w <= 0 or h <= 0:
            self._cap.release()
            raise VideoError(f"video {self.path}: no frames, or frame count/size unknown")
        self.info = VideoInfo(str(self.path), n, fps if math.isfinite(fps) else 0.0, w, h)
        self._next = 0  # index the next cap.read() returns

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._cap.release()

    def _seek(self, index: int) -> None:
        cv2 = _cv2()
        gap = index - self._next
        if 0 <= gap <= FORWARD_DECODE_LIMIT:
            for _ in range(gap):
                if not self._cap.grab():
                    break
                self._next += 1
        if self._next != index:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            self._next = index

    def read_bgr(self, index: int) -> np.ndarray:
        """Frame ``index`` as OpenCV's BGR uint8 (H, W, 3)."""
        if isinstance(index, bool) or not 0 <= int(index) < self.info.n_frames:
            raise VideoError(f"video {self.path}: frame {index} outside "
                             f"0..{self.info.n_frames - 1}")
        index = int(index)
        self._seek(index)
        ok, frame = self._cap.read()
        if not ok or frame is None:
            self._next = -1  # unknown position: the next read seeks
            raise VideoError(f"video {self.path}: frame {index} cannot be decoded (truncated "
                             "or corrupt video)")
        self._next = index + 1
        return frame

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` as RGB uint8 (H, W, 3)."""
        return np.ascontiguousarray(self.read_bgr(index)[:, :, ::-1])

    def iter_frames(self, indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(index, RGB frame) for ``indices`` in increasing order (decoded through, seeking
        only across long gaps)."""
        for i in sorted(set(int(i) for i in indices)):
            yield i, self.read(i)


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """The :class:`VideoInfo` of ``path``; raises :class:`VideoError` naming the file."""
    with VideoReader(path) as reader:
        return reader.info


# ------------------------------------------------------------- per-thread readers
class FrameReaders:
    """Open videos kept per thread (OpenCV captures are not thread-safe), the few most
    recently used ones; owned by whoever decodes (an :class:`ImageSource`, the timeline's
    decoding thread). Pickling drops the open readers."""

    PER_THREAD = 4

    def __init__(self) -> None:
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._local = threading.local()

    def _readers(self) -> OrderedDict[str, VideoReader]:
        readers: OrderedDict[str, VideoReader] | None = getattr(self._local, "readers", None)
        if readers is None:
            readers = self._local.readers = OrderedDict()
        return readers

    def reader(self, video: str | os.PathLike[str]) -> VideoReader:
        """This thread's open reader of ``video``."""
        path = os.path.realpath(video)
        readers = self._readers()
        reader = readers.get(path)
        if reader is None:
            reader = VideoReader(path)
            readers[path] = reader
            while len(readers) > self.PER_THREAD:
                readers.popitem(last=False)[1].close()
        readers.move_to_end(path)
        return reader

    def read(self, video: str | os.PathLike[str], index: int) -> np.ndarray:
        """Frame ``index`` of ``video`` (RGB uint8), through this thread's open reader."""
        try:
            return self.reader(video).read(index)
        except VideoError:
            readers = self._readers()  # a changed file is reopened next time
            reader = readers.pop(os.path.realpath(video), None)
            if reader is not None:
                reader.close()
            raise

    def close(self) -> None:
        """Close this thread's open videos."""
        readers = getattr(self._local, "readers", None)
        while readers:
            readers.popitem()[1].close()


# ------------------------------------------------------------- image sources
def video_path(image_root: str | os.PathLike[str], video: str) -> Path:
    """The video file of a record: ``video`` relative to the image root, or absolute."""
    p = Path(video)
    return p if p.is_absolute() else Path(os.path.realpath(image_root)) / p


def _downscaled(image: np.ndarray, max_side: int | None) -> np.ndarray:
    if max_side is None:
        return image
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    cv2 = _cv2()
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class _ProjectFrames(Mapping[str, tuple[str, int]]):
    """(video file, frame) of a project's listed video frames, read from its image records
    at each look-up (frames added later are found; the records are never changed in
    place, so pool threads may read them)."""

    def __init__(self, project: Project) -> None:
        self._project = project
        self._root = os.path.realpath(project.image_root)

    def __getitem__(self, relpath: str) -> tuple[str, int]:
        rec = self._project.image(relpath)  # KeyError when not listed
        if rec.video is None or rec.frame is None:
            raise KeyError(relpath)
        return str(video_path(self._root, rec.video)), int(rec.frame)

    def __iter__(self) -> Iterator[str]:
        return (r.path for r in self._project.images if r.video is not None)

    def __len__(self) -> int:
        return sum(1 for r in self._project.images if r.video is not None)


class ImageSource:
    """Loads the listed images of one project: a file under the image root, or a video
    frame decoded on demand, found through the project's :class:`ImageRecord` (its
    ``video`` and ``frame``). Built from the project and passed where images are loaded
    (``loader`` of the jobs, the GUI's image and thumbnail loaders); calling it with an
    absolute listed path (as :func:`~annotator.io.images.resolve_image_path` gives) is an
    ``ImageLoader``. ``frames`` maps a listed relative path to (video file, frame index)."""

    def __init__(self, image_root: str | os.PathLike[str],
                 frames: Mapping[str, tuple[str, int]] | None = None) -> None:
        self.image_root = str(image_root)
        self._real_root = Path(os.path.realpath(image_root))
        self.frames: Mapping[str, tuple[str, int]] = frames if frames is not None else {}
        self.readers = FrameReaders()

    @classmethod
    def of(cls, project: Project, paths: Iterable[str] | None = None) -> ImageSource:
        """A snapshot of ``project``'s video frames (only those among ``paths`` when given):
        frozen data a job on another thread or process may hold (picklable)."""
        root = os.path.realpath(project.image_root)
        records: Iterable[ImageRecord] = project.images
        if paths is not None:
            records = []
            for p in dict.fromkeys(paths):
                try:
                    records.append(project.image(p))
                except KeyError:
                    continue
        frames = {r.path: (str(video_path(root, r.video)), int(r.frame))
                  for r in records if r.video is not None and r.frame is not None}
        return cls(project.image_root, frames)

    @classmethod
    def live(cls, project: Project) -> ImageSource:
        """Reads ``project``'s records at each load, so frames added later load too (the
        GUI's loaders, which outlive an Add video)."""
        return cls(project.image_root, _ProjectFrames(project))

    @classmethod
    def for_project(cls, project: Project | None) -> ImageSource:
        """:meth:`live` of ``project``; files under no root when None."""
        return cls("") if project is None else cls.live(project)

    def frame_of(self, path: str | os.PathLike[str]) -> tuple[str, int] | None:
        """(video file, frame) when ``path`` (relative listed path, or absolute under the
        image root) is a video frame, else None."""
        p = Path(path)
        if p.is_absolute():
            try:
                rel = p.relative_to(self._real_root).as_posix()
            except ValueError:
                return None
        else:
            rel = p.as_posix()
        try:
            return self.frames.get(rel)
        except KeyError:
            return None

    def _decode(self, path: str | os.PathLike[str], source: tuple[str, int],
                max_side: int | None) -> np.ndarray:
        video, index = source
        try:
            image = self.readers.read(video, index)
        except VideoError as exc:
            raise VideoError(f"{path} (frame {index}): {exc}") from None
        return _downscaled(image, max_side)

    def __call__(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The image at the absolute listed ``path`` (RGB uint8), a frame decoded."""
        source = self.frame_of(path)
        if source is not None:
            return self._decode(path, source, None)
        return load_image(path)

    def thumbnail(self, path: str | os.PathLike[str], max_side: int = 160) -> np.ndarray:
        """:func:`~annotator.io.images.load_thumbnail` of an absolute listed path."""
        source = self.frame_of(path)
        if source is not None:
            return self._decode(path, source, max_side)
        return load_thumbnail(path, max_side)

    def size(self, path: str | os.PathLike[str]) -> tuple[int, int]:
        """(width, height) of an absolute listed path (a frame's from its video header)."""
        source = self.frame_of(path)
        if source is None:
            return read_size(path)
        video, index = source
        info = self.readers.reader(video).info
        if not 0 <= index < info.n_frames:
            raise VideoError(f"video {video}: frame {index} outside 0..{info.n_frames - 1}")
        return info.width, info.height

    def load(self, relpath: str, max_side: int | None = None) -> np.ndarray:
        """The listed image ``relpath`` (a thumbnail with ``max_side``); every failure is an
        :class:`ImageLoadError` that names it (as :func:`~annotator.io.images.load_listed`)."""
        source = self.frames.get(relpath) if relpath in self.frames else None
        if source is None:
            return load_listed(self.image_root, relpath, max_side)
        try:
            return self._decode(relpath, source, max_side)
        except ImageLoadError as exc:
            msg = str(exc)
            raise VideoError(msg if relpath in msg else f"{relpath}: {msg}") from None


# ------------------------------------------------------------------- records
def frame_records(image_root: str | os.PathLike[str], video: str | os.PathLike[str],
                  frames: Sequence[int] | None = None,
                  info: VideoInfo | None = None) -> list[ImageRecord]:
    """Image records for ``frames`` (default: every frame) of ``video``; the record's video
    is relative to ``image_root`` when inside it, else absolute."""
    root = Path(os.path.realpath(image_root))
    full = Path(os.path.realpath(video))
    info = info or probe(full)
    try:
        rel: str = full.relative_to(root).as_posix()
    except ValueError:
        rel = str(full)
    indices = range(info.n_frames) if frames is None else sorted(set(int(f) for f in frames))
    out = []
    for i in indices:
        if not 0 <= i < info.n_frames:
            raise VideoError(f"video {full}: frame {i} outside 0..{info.n_frames - 1}")
        out.append(ImageRecord(frame_name(full, i, info.n_frames), info.width, info.height,
                               video=rel, frame=i, time_s=round(info.time_of(i), 6)))
    return out


def extract_frames(image_root: str | os.PathLike[str], records: Iterable[ImageRecord],
                   out_root: str | os.PathLike[str]) -> list[Path]:
    """Write the video frames among ``records`` as PNG files under ``out_root`` at their
    listed paths (an export's copy); returns the files written. Each video is decoded once,
    in frame order."""
    cv2 = _cv2()
    by_video: dict[str, list[ImageRecord]] = {}
    for r in records:
        if r.video is not None:
            by_video.setdefault(str(video_path(image_root, r.video)), []).append(r)
    written = []
    for video, recs in by_video.items():
        with VideoReader(video) as reader:
            for r in sorted(recs, key=lambda r: int(r.frame or 0)):
                target = Path(out_root) / r.path
                target.parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(target), reader.read_bgr(int(r.frame or 0))):
                    raise VideoError(f"cannot write frame {r.frame} of {video} to {target}")
                written.append(target)
    return written


def sample_thumbnails(video: str | os.PathLike[str], max_samples: int = 1000,
                      size: tuple[int, int] = (32, 24), start: int = 0,
                      stop: int | None = None,
                      on_frame: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices, grey thumbnails as float32 rows) of about ``max_samples`` frames
    evenly spread over [start, stop): a cheap global descriptor of each sampled frame, as
    DeepLabCut's k-means extraction uses. Decodes sequentially (``grab`` skips frames
    without converting them); ``on_frame(done, total)`` is called per sample (and may
    raise to cancel)."""
    cv2 = _cv2()
    with VideoReader(video) as reader:
        n = reader.info.n_frames
        stop = n if stop is None else min(int(stop), n)
        start = max(0, int(start))
        if stop <= start:
            raise VideoError(f"video {video}: empty frame range {start}..{stop}")
        step = max(1, math.ceil((stop - start) / max(1, max_samples)))
        wanted = list(range(start, stop, step))
        cap = reader._cap
        if start:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        rows, kept = [], []
        pos = start
        for i in wanted:
            while pos < i:  # decode through the skipped frames without converting them
                if not cap.grab():
                    break
                pos += 1
            ok, frame = cap.read()
            pos += 1
            if not ok:
                log.warning("video %s: decoding stopped at frame %d of %d", video, i, n)
                break
            grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            rows.append(cv2.resize(grey, size, interpolation=cv2.INTER_AREA).ravel())
            kept.append(i)
            if on_frame is not None:
                on_frame(len(kept), len(wanted))
        reader._next = -1
    if not rows:
        raise VideoError(f"video {video}: no frame could be decoded")
    return np.asarray(kept, dtype=np.int64), np.asarray(rows, dtype=np.float32)


def add_video_frames(project: Project, video: str | os.PathLike[str],
                     frames: Sequence[int] | None = None) -> list[str]:
    """Add ``frames`` (default: all) of ``video`` to ``project`` as decoded-on-demand images
    (load them through :class:`ImageSource`); returns the paths added (frames already
    listed are skipped). Two different videos with the same file stem cannot share a
    project (their frame names would collide): that is a :class:`VideoError`."""
    full = os.path.realpath(video)
    records = frame_records(project.image_root, full, frames)
    stem = Path(full).stem
    for r in project.images:
        if r.video is not None and Path(r.video).stem == stem \
                and str(video_path(project.image_root, r.video)) != full:
            raise VideoError(f"video {full}: the project already has frames of another video "
                             f"named {stem!r} ({r.video}); rename one of them")
    return project.add_images(records)


def new_video_project(videos: Sequence[tuple[str | os.PathLike[str], Sequence[int] | None]],
                      schema: Any, image_root: str | os.PathLike[str] | None = None) -> Project:
    """A project over the given (video, frames) pairs (frames None: every frame). The image
    root defaults to the folder holding all the videos, so video paths are stored relative
    to it and the videos can move with the project."""
    if not videos:
        raise ValueError("no video given")
    fulls = [os.path.realpath(v) for v, _ in videos]
    for f in fulls:
        _check_file(Path(f))
    root = image_root or os.path.commonpath([os.path.dirname(f) for f in fulls])
    project = Project(str(Path(root).resolve()), [], schema)
    for full, (_, frames) in zip(fulls, videos):
        add_video_frames(project, full, frames)
    return project
