"""Videos as an image source: accurate decoding by index, records, persistence, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from annotator.domain.project import ImageRecord, Project
from annotator.domain.schema import KeypointSchema
from annotator.io import video as vid
from annotator.io.images import ImageLoadError, load_listed, read_size, resolve_image_path
from annotator.io.project_file import load_project, save_project
from tests.video_util import OPENFIELD_VIDEO, write_video

SCHEMA = KeypointSchema("mouse", ("snout", "tail"))


@pytest.fixture
def clip(tmp_path):
    return write_video(tmp_path / "clip.mp4", n=90)


def _sequential(path, limit=None):
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    while limit is None or len(out) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame[:, :, ::-1].copy())
    cap.release()
    return out


def test_read_by_index_equals_sequential_frame_in_any_order(clip):
    seq = _sequential(clip)
    with vid.VideoReader(clip) as reader:
        assert reader.info.n_frames == len(seq) == 90
        assert (reader.info.width, reader.info.height) == (64, 48)
        rng = np.random.default_rng(1)
        # backward jumps, short forward steps (decoded through) and long ones (seeks)
        order = [89, 0, 1, 2, 40, 35, 36, 80, 3, *rng.integers(0, 90, 20).tolist()]
        for i in order:
            assert np.array_equal(reader.read(i), seq[i]), i
        with pytest.raises(vid.VideoError, match="frame 90 outside 0..89"):
            reader.read(90)


def test_openfield_direct_reads_equal_the_sequential_frames():
    seq = _sequential(OPENFIELD_VIDEO, limit=300)
    with vid.VideoReader(OPENFIELD_VIDEO) as reader:
        assert reader.info.n_frames == 2330
        assert (reader.info.width, reader.info.height) == (640, 480)
        assert reader.info.fps == pytest.approx(30.0, abs=0.01)
        for i in (299, 7, 250, 251, 200, 123, 0):
            assert np.array_equal(reader.read(i), seq[i]), i


def test_missing_and_unreadable_videos_are_named(tmp_path):
    with pytest.raises(vid.VideoError, match=r"gone\.mp4: file not found"):
        vid.probe(tmp_path / "gone.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(vid.VideoError, match=r"junk\.mp4"):
        vid.probe(junk)
    assert issubclass(vid.VideoError, ImageLoadError)  # every loader reports it as unreadable


def test_frames_load_through_the_listed_path(clip):
    project = vid.new_video_project([(clip, [0, 10, 89])], SCHEMA)
    rec = project.images[1]
    assert (rec.path, rec.video, rec.frame) == ("clip/img10.png", "clip.mp4", 10)
    assert rec.time_s == pytest.approx(10 / 25)
    assert (rec.width, rec.height) == (64, 48)
    assert not (resolve_image_path(project.image_root, rec.path)).exists()  # not extracted
    seq = _sequential(clip)
    source = vid.ImageSource.of(project)  # the frame's video found through its record
    assert np.array_equal(source.load(rec.path), seq[10])
    thumb = source.load(rec.path, max_side=32)
    assert thumb.shape == (24, 32, 3)
    listed = resolve_image_path(project.image_root, rec.path)
    assert source.size(listed) == (64, 48)
    assert np.array_equal(source(listed), seq[10])  # an ImageLoader of the jobs
    assert np.array_equal(source.thumbnail(listed, 32), thumb)
    # no process-wide registry: the path alone (without the project) is no image
    with pytest.raises(ImageLoadError, match="file not found"):
        load_listed(project.image_root, rec.path)
    with pytest.raises(ImageLoadError, match="file not found"):
        read_size(listed)


def test_frame_names_follow_deeplabcut_digits(tmp_path):
    assert vid.frame_name("a/m3v1mp4.mp4", 123, 2330) == "m3v1mp4/img0123.png"
    assert vid.frame_name("x.avi", 5, 100) == "x/img05.png"
    assert vid.frame_name("x.avi", 5, 101) == "x/img005.png"


def test_project_file_keeps_video_fields_and_reopens_without_the_video(clip, tmp_path):
    project = vid.new_video_project([(clip, [3, 50])], SCHEMA)
    out = tmp_path / "p.kpproj.json"
    save_project(project, out)
    again = load_project(out)
    assert again.images == project.images
    seq = _sequential(clip)
    assert np.array_equal(vid.ImageSource.of(again).load(again.images[1].path), seq[50])
    clip.rename(tmp_path / "moved.mp4")
    reopened = load_project(out)  # the project still opens
    assert [r.frame for r in reopened.images] == [3, 50]
    with pytest.raises(ImageLoadError, match=r"^clip/img03\.png \(frame 3\): .*clip\.mp4: "
                       "file not found"):
        vid.ImageSource.of(reopened).load(reopened.images[0].path)


def test_image_record_checks_video_fields():
    with pytest.raises(ValueError, match="both video and frame"):
        ImageRecord("a/img1.png", video="a.mp4")
    with pytest.raises(ValueError, match="frame -1"):
        ImageRecord("a/img1.png", video="a.mp4", frame=-1)
    with pytest.raises(ValueError, match="time"):
        ImageRecord("a/img1.png", video="a.mp4", frame=1, time_s=float("nan"))
    assert ImageRecord("plain.png").video is None


def test_same_stem_from_another_folder_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_video(tmp_path / "a" / "m.mp4", n=10)
    b = write_video(tmp_path / "b" / "m.mp4", n=10)
    with pytest.raises(vid.VideoError, match="already has frames of another video named 'm'"):
        vid.new_video_project([(a, [1]), (b, [2])], SCHEMA)


def test_readers_on_several_threads_give_the_right_frames(clip):
    project = vid.new_video_project([(clip, None)], SCHEMA)
    seq = _sequential(clip)
    source = vid.ImageSource.of(project)  # one source, a reader per thread
    errors = []

    def work(offset: int) -> None:
        try:
            for i in range(offset, 90, 7):
                rec = project.images[i]
                if not np.array_equal(source.load(rec.path), seq[i]):
                    errors.append(i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            source.readers.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_plain_images_next_to_video_frames_still_load(tmp_path, clip):
    from PIL import Image

    Image.new("RGB", (5, 4), (1, 2, 3)).save(tmp_path / "still.png")
    project = Project(str(tmp_path), [ImageRecord("still.png")], SCHEMA)
    live = vid.ImageSource.live(project)  # as the GUI's loaders hold it
    vid.add_video_frames(project, clip, [1])
    assert live.load("still.png").shape == (4, 5, 3)
    assert live.load("clip/img01.png").shape == (48, 64, 3)  # added after the source
    assert vid.ImageSource.of(project).load("clip/img01.png").shape == (48, 64, 3)
    snapshot = vid.ImageSource.of(project, ["still.png"])
    with pytest.raises(ImageLoadError, match="file not found"):  # not in the snapshot
        snapshot.load("clip/img01.png")


def test_image_source_pickles_without_its_open_readers(clip):
    import pickle

    project = vid.new_video_project([(clip, [5])], SCHEMA)
    source = vid.ImageSource.of(project)
    first = source.load(project.images[0].path)
    again = pickle.loads(pickle.dumps(source))  # a Ray actor's copy
    assert np.array_equal(again.load(project.images[0].path), first)
