"""Videos as an image source: probing, accurate frame decoding by index (OpenCV), the
synthetic frame names of video-backed image records, and the registry that lets every
path-keyed loader (:mod:`annotator.io.images`) decode a listed frame on demand.

A frame of a video is an :class:`~annotator.domain.project.ImageRecord` whose ``path`` is
``<video stem>/img<frame>.png`` (the name a DeepLabCut export gives it) and whose ``video`` /
``frame`` / ``time_s`` say where it comes from. Nothing is extracted to disk: loading the
listed path decodes the frame (see :func:`register_frames`). Readers are kept per thread
(OpenCV captures are not thread-safe); sequential and short forward reads avoid seeking.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from annotator.domain.project import ImageRecord, Project
from annotator.io.images import ImageLoadError

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
_local = threading.local()
_READERS_PER_THREAD = 4


def _thread_reader(path: str) -> VideoReader:
    readers: OrderedDict[str, VideoReader] | None = getattr(_local, "readers", None)
    if readers is None:
        readers = _local.readers = OrderedDict()
    reader = readers.get(path)
    if reader is None:
        reader = VideoReader(path)
        readers[path] = reader
        while len(readers) > _READERS_PER_THREAD:
            readers.popitem(last=False)[1].close()
    readers.move_to_end(path)
    return reader


def read_frame(video: str | os.PathLike[str], index: int) -> np.ndarray:
    """Frame ``index`` of ``video`` (RGB uint8), through this thread's open reader."""
    path = os.path.realpath(video)
    try:
        return _thread_reader(path).read(index)
    except VideoError:
        readers = getattr(_local, "readers", None)
        if readers is not None and path in readers:  # a changed file is reopened next time
            readers.pop(path).close()
        raise


def close_thread_readers() -> None:
    """Close this thread's open videos."""
    readers = getattr(_local, "readers", None)
    while readers:
        readers.popitem()[1].close()


# ----------------------------------------------------------------- the registry
_lock = threading.Lock()
_frames: dict[str, tuple[str, int]] = {}  # listed absolute path -> (video, frame)
_by_root: dict[str, set[str]] = {}


def video_path(image_root: str | os.PathLike[str], video: str) -> Path:
    """The video file of a record: ``video`` relative to the image root, or absolute."""
    p = Path(video)
    return p if p.is_absolute() else Path(os.path.realpath(image_root)) / p


def _listed(image_root: str | os.PathLike[str], relpath: str) -> str:
    return str(Path(os.path.realpath(image_root)) / relpath)


def register_frames(image_root: str | os.PathLike[str], records: Iterable[ImageRecord],
                    replace: bool = False) -> int:
    """Make the video frames among ``records`` loadable by their listed path under
    ``image_root``; ``replace`` first forgets the root's earlier frames (a project
    reopened). Returns how many frames were registered."""
    root = os.path.realpath(image_root)
    entries = {
        _listed(root, r.path): (str(video_path(root, r.video)), int(r.frame))
        for r in records if r.video is not None and r.frame is not None
    }
    with _lock:
        if replace:
            for key in _by_root.pop(root, set()):
                _frames.pop(key, None)
        _frames.update(entries)
        _by_root.setdefault(root, set()).update(entries)
    return len(entries)


def register_project(project: Project) -> int:
    """:func:`register_frames` for every video frame of ``project`` (replacing the root's)."""
    return register_frames(project.image_root, project.images, replace=True)


def frame_source(path: str | os.PathLike[str]) -> tuple[str, int] | None:
    """(video file, frame index) when ``path`` is a registered video frame, else None."""
    if not _frames:
        return None
    return _frames.get(str(path))


def load_registered(path: str | os.PathLike[str], source: tuple[str, int],
                    max_side: int | None = None) -> np.ndarray:
    """Decode the registered frame ``source`` of ``path`` (RGB uint8), downscaled so its
    longer side is at most ``max_side`` when given. Errors name the video and the frame."""
    video, index = source
    try:
        image = read_frame(video, index)
    except VideoError as exc:
        raise VideoError(f"{Path(path).name} (frame {index}): {exc}") from None
    if max_side is not None:
        h, w = image.shape[:2]
        scale = max_side / max(h, w)
        if scale < 1:
            cv2 = _cv2()
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


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


def registered_size(source: tuple[str, int]) -> tuple[int, int]:
    """(width, height) of a registered frame, from the video's header."""
    video, index = source
    info = _thread_reader(os.path.realpath(video)).info
    if not 0 <= index < info.n_frames:
        raise VideoError(f"video {video}: frame {index} outside 0..{info.n_frames - 1}")
    return info.width, info.height


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
    and register them; returns the paths added (frames already listed are skipped). Two
    different videos with the same file stem cannot share a project (their frame names
    would collide): that is a :class:`VideoError`."""
    full = os.path.realpath(video)
    records = frame_records(project.image_root, full, frames)
    stem = Path(full).stem
    for r in project.images:
        if r.video is not None and Path(r.video).stem == stem \
                and str(video_path(project.image_root, r.video)) != full:
            raise VideoError(f"video {full}: the project already has frames of another video "
                             f"named {stem!r} ({r.video}); rename one of them")
    register_frames(project.image_root, records)
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
