"""Video projects exported to what DeepLabCut and SLEAP train on, and read back."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from annotator.domain.annotation import ImageAnnotation, ImageStatus, Instance, Keypoint, Origin
from annotator.domain.schema import KeypointSchema
from annotator.io.formats import ExportOptions, export_project, import_dataset
from annotator.io.images import ImageLoadError, load_image
from annotator.io.video import ImageSource, VideoReader, new_video_project
from annotator.jobs.frame_pick import pick_frames
from tests.video_util import OPENFIELD_VIDEO, write_video

SCHEMA = KeypointSchema("mouse", ("snout", "leftear", "rightear", "tailbase"),
                        ((0, 1), (0, 2), (0, 3)), ((1, 2),))


def _label(project, frames):
    """Reference labels whose coordinates encode the frame number (checked after export)."""
    for r in project.images:
        if r.frame in frames:
            kps = tuple(Keypoint(10.0 + j, r.frame / 10.0, 2) for j in range(len(SCHEMA)))
            project.set_annotation(r.path, ImageAnnotation((Instance(kps),),
                                                           ImageStatus.REFERENCE), "label")


def test_openfield_kmeans_frames_export_to_dlc_and_pandas_reads_matching_frames(tmp_path):
    import pandas as pd

    frames = pick_frames(OPENFIELD_VIDEO, 50, "kmeans")
    project = new_video_project([(OPENFIELD_VIDEO, frames)], SCHEMA)
    labelled = frames[::5]
    _label(project, labelled)
    out = tmp_path / "dlc"
    report = export_project(project, "dlc", out)
    assert report.images == len(labelled)
    folder = out / "labeled-data" / "m3v1mp4"
    df = pd.read_csv(folder / "CollectedData_annotator.csv", header=[0, 1, 2],
                     index_col=[0, 1, 2])
    names = df.index.get_level_values(2).tolist()
    read_frames = [int(re.fullmatch(r"img(\d{4})\.png", n).group(1)) for n in names]
    assert read_frames == labelled
    for frame, (_, row) in zip(read_frames, df.iterrows()):
        assert row[("annotator", "snout", "y")] == pytest.approx(frame / 10.0)
        assert row[("annotator", "tailbase", "x")] == pytest.approx(13.0)
    with VideoReader(OPENFIELD_VIDEO) as reader:  # the PNG is the video frame, losslessly
        for frame in (read_frames[0], read_frames[-1]):
            assert np.array_equal(load_image(folder / f"img{frame:04d}.png"),
                                  reader.read(frame))
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert list(config["video_sets"]) == [str(OPENFIELD_VIDEO.resolve())]
    assert config["video_sets"][str(OPENFIELD_VIDEO.resolve())]["crop"] == "0, 640, 0, 480"
    assert not (tmp_path / "m3v1mp4").exists()  # nothing extracted beside the export


def test_video_backed_slp_round_trip_keeps_frame_indices(tmp_path):
    import sleap_io as sio

    clip = write_video(tmp_path / "clip.mp4", n=60)
    project = new_video_project([(clip, [2, 17, 33, 59])], SCHEMA)
    _label(project, [17, 59])
    r33 = next(r for r in project.images if r.frame == 33)
    pred = tuple(Keypoint(5.0, 6.0, 2, Origin.PREDICTED, 0.25) for _ in SCHEMA.keypoints)
    project.set_annotation(r33.path, ImageAnnotation((Instance(pred),), ImageStatus.PREDICTED),
                           "predict")
    out = tmp_path / "labels.slp"
    export_project(project, "sleap", out, ExportOptions(include_predictions=True))
    labels = sio.load_slp(str(out), open_videos=False)
    assert [lf.frame_idx for lf in labels.labeled_frames] == [17, 33, 59]
    assert {v.filename for v in labels.videos} == {str(clip.resolve())}
    back = import_dataset(out)
    assert [(r.video, r.frame) for r in back.images] == [("clip.mp4", 17), ("clip.mp4", 33),
                                                        ("clip.mp4", 59)]
    ann = back.annotation(back.images[2].path)
    assert ann.status == ImageStatus.REFERENCE
    assert ann.instances[0].keypoints[0].y == pytest.approx(5.9)
    pred_back = back.annotation(back.images[1].path)
    assert pred_back.status == ImageStatus.PREDICTED
    assert pred_back.instances[0].keypoints[0].confidence == pytest.approx(0.25)
    with VideoReader(clip) as reader:  # frames decode from the video again
        assert np.array_equal(ImageSource.of(back).load(back.images[0].path), reader.read(17))
    # the video gone: the labels still import, the frames read as unreadable with its name
    clip.rename(tmp_path / "elsewhere.mp4")
    gone = import_dataset(out)
    assert [r.frame for r in gone.images] == [17, 33, 59]
    with pytest.raises(ImageLoadError, match=r"clip\.mp4: file not found"):
        ImageSource.of(gone).load(gone.images[0].path)


def test_coco_export_writes_the_frames_beside_the_file(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", n=20)
    project = new_video_project([(clip, [4, 9])], SCHEMA)
    _label(project, [9])
    out = tmp_path / "coco" / "k.json"
    export_project(project, "coco", out)
    back = import_dataset(out)
    assert [r.path for r in back.images] == ["clip/img09.png"]
    with VideoReader(clip) as reader:
        assert np.array_equal(load_image(out.parent / "clip" / "img09.png"), reader.read(9))


def test_dlc_export_of_a_video_project_imports_back_as_video_frames(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", n=30)
    project = new_video_project([(clip, [3, 14, 27])], SCHEMA)
    _label(project, [14, 27])
    out = tmp_path / "dlc"
    export_project(project, "dlc", out)
    back = import_dataset(out / "config.yaml")
    assert [(r.path, r.video, r.frame) for r in back.images] == [
        ("clip/img14.png", str(clip.resolve()), 14), ("clip/img27.png", str(clip.resolve()), 27)]
    assert back.annotation("clip/img27.png").instances[0].keypoints[0].y == pytest.approx(2.7)
    assert back.images[0].time_s == pytest.approx(14 / 25)
    with VideoReader(clip) as reader:  # decoded from the video, not the exported PNG
        assert np.array_equal(ImageSource.of(back).load("clip/img14.png"), reader.read(14))
    # the video gone: the exported PNGs are the images
    clip.rename(tmp_path / "elsewhere.mp4")
    plain = import_dataset(out / "config.yaml")
    assert [(r.path, r.video) for r in plain.images] == [
        ("labeled-data/clip/img14.png", None), ("labeled-data/clip/img27.png", None)]
    assert ImageSource.of(plain).load(plain.images[0].path).shape == (48, 64, 3)
