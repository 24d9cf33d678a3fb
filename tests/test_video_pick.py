"""Picking the frames of a video worth labelling; ``annotator video frames``."""

from __future__ import annotations

import time

import numpy as np
import pytest

from annotator.cli import main
from annotator.domain.annotation import ImageAnnotation, ImageStatus, Instance, Keypoint, Origin
from annotator.domain.project import Project
from annotator.domain.schema import KeypointSchema
from annotator.io.project_file import load_project
from annotator.io.video import ImageSource, new_video_project
from annotator.jobs.frame_pick import (
    kmeans_pick,
    least_confident,
    pick_frames,
    pick_uniform,
)
from tests.video_util import OPENFIELD_VIDEO, write_video


def test_uniform_spreads_over_the_range_with_both_ends():
    assert pick_uniform(100, 5) == [0, 25, 50, 74, 99]
    assert pick_uniform(3, 10) == [0, 1, 2]
    assert pick_uniform(100, 3, start=10, stop=21) == [10, 15, 20]


def test_kmeans_takes_one_representative_per_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    x = np.concatenate([c + rng.normal(0, 0.1, (30, 2)) for c in centres]).astype(np.float32)
    picks = kmeans_pick(x, 3)
    assert sorted(p // 30 for p in picks) == [0, 1, 2]
    assert kmeans_pick(x[:2], 5) == [0, 1]


def test_kmeans_on_a_video_finds_each_scene(tmp_path):
    clip = write_video(tmp_path / "scenes.mp4", n=90, scenes=3)
    frames = pick_frames(clip, 3, "kmeans", max_samples=45)
    assert sorted(f * 3 // 90 for f in frames) == [0, 1, 2]


def test_least_confident_orders_predicted_frames_by_worst_confidence():
    schema = KeypointSchema("m", ("a",))
    from annotator.domain.project import ImageRecord

    recs = [ImageRecord(f"v/img{i}.png", video="v.mp4", frame=i) for i in range(4)]

    def pred(c: float) -> ImageAnnotation:
        kp = Keypoint(1.0, 1.0, 2, Origin.PREDICTED, c)
        return ImageAnnotation((Instance((kp,)),), ImageStatus.PREDICTED)

    anns = {"v/img0.png": pred(0.9), "v/img1.png": pred(0.2), "v/img3.png": pred(0.5),
            "v/img2.png": ImageAnnotation((Instance((Keypoint(1.0, 1.0, 2),)),),
                                          ImageStatus.REVIEWED)}
    project = Project("/tmp", recs, schema, anns)
    assert least_confident(project, 2) == ["v/img1.png", "v/img3.png"]


def test_cli_picks_50_kmeans_frames_of_the_openfield_video_in_under_a_minute(tmp_path):
    out = tmp_path / "open.kpproj"
    t0 = time.perf_counter()
    rc = main(["video", "frames", str(OPENFIELD_VIDEO), "--pick", "kmeans", "--n", "50",
               "--out", str(out)])
    elapsed = time.perf_counter() - t0
    assert rc == 0
    assert elapsed < 60, elapsed
    project = load_project(out)
    frames = [r.frame for r in project.images]
    assert len(frames) == 50 == len(set(frames))
    assert all(0 <= f < 2330 for f in frames)
    assert max(frames) - min(frames) > 1000  # spread over the recording, not one stretch
    rec = project.images[0]
    assert rec.path == f"m3v1mp4/img{rec.frame:04d}.png"
    assert ImageSource.of(project).load(rec.path).shape == (480, 640, 3)


def test_cli_adds_uniform_frames_and_refuses_bad_input(tmp_path, capsys):
    clip = write_video(tmp_path / "clip.mp4", n=40)
    out = tmp_path / "p.kpproj.json"
    assert main(["video", "frames", str(clip), "--pick", "uniform", "--n", "4", "--out",
                 str(out), "--schema", "person"]) == 0
    assert main(["video", "frames", str(clip), "--n", "4", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    other = write_video(tmp_path / "other.mp4", n=20)
    assert main(["video", "frames", str(other), "--pick", "uniform", "--n", "2", "--out",
                 str(out), "--add"]) == 0
    project = load_project(out)
    assert [(r.video, r.frame) for r in project.images] == [
        ("clip.mp4", 0), ("clip.mp4", 13), ("clip.mp4", 26), ("clip.mp4", 39),
        ("other.mp4", 0), ("other.mp4", 19)]
    assert project.schema.name == "person"
    assert main(["video", "frames", str(tmp_path / "nope.mp4"), "--n", "2", "--out",
                 str(tmp_path / "q.kpproj.json")]) == 2
    assert "nope.mp4: file not found" in capsys.readouterr().err


def test_new_video_project_rejects_an_empty_list():
    with pytest.raises(ValueError, match="no video"):
        new_video_project([], KeypointSchema("m", ("a",)))
