"""Propagation along time: nearest-in-time references, chunked resumable video propagation."""

from __future__ import annotations

from annotator.cli import main
from annotator.domain.annotation import ImageStatus, Keypoint, Visibility
from annotator.domain.project import ImageRecord, Project
from annotator.domain.schema import KeypointSchema
from annotator.io.project_file import load_project, save_project
from annotator.io.video import new_video_project
from annotator.jobs.video_propagate import nearest_in_time, pending_frames, temporal_requests
from tests.video_util import write_video

SCHEMA = KeypointSchema("box", ("corner", "centre"))


def _project_with_refs(frames_a, refs, extra_refs=()):
    recs = [ImageRecord(f"a/img{i:03d}.png", video="a.mp4", frame=i, time_s=i / 10)
            for i in frames_a]
    recs += [ImageRecord(f"b/img{i:03d}.png", video="b.mp4", frame=i, time_s=i / 10)
             for i in (0, 1)]
    recs.append(ImageRecord("still.png"))
    p = Project("/tmp", recs, SCHEMA)
    for path in [f"a/img{i:03d}.png" for i in refs] + list(extra_refs):
        p.set_keypoint(path, 0, Keypoint(1.0, 2.0, Visibility.VISIBLE))
        p.set_status(path, ImageStatus.REFERENCE)
    return p


def test_nearest_in_time_prefers_the_same_video_by_time_distance():
    p = _project_with_refs(range(0, 100, 5), refs=[0, 20, 45, 95],
                           extra_refs=["b/img000.png", "still.png"])
    assert nearest_in_time(p, "a/img040.png", 2) == ["a/img045.png", "a/img020.png"]
    assert nearest_in_time(p, "a/img010.png", 3) == ["a/img000.png", "a/img020.png",
                                                     "a/img045.png"]
    # fewer same-video references than k: the others follow in project order
    assert nearest_in_time(p, "b/img001.png", 3) == ["b/img000.png", "a/img000.png",
                                                     "a/img020.png"]
    # a reference is never its own reference; a still image gets project order
    assert nearest_in_time(p, "a/img045.png", 1) == ["a/img020.png"]
    assert nearest_in_time(p, "still.png", 2) == ["a/img000.png", "a/img020.png"]


def test_temporal_requests_group_targets_that_share_references():
    p = _project_with_refs(range(0, 100, 5), refs=[0, 50, 95])
    targets = ["a/img005.png", "a/img010.png", "a/img060.png", "a/img090.png"]
    reqs = temporal_requests(p, targets, 1)
    got = {r.targets: tuple(s.path for s in r.references) for r in reqs}
    assert got == {("a/img005.png", "a/img010.png"): ("a/img000.png",),
                   ("a/img060.png",): ("a/img050.png",),
                   ("a/img090.png",): ("a/img095.png",)}


def test_video_propagate_predicts_every_frame_and_resumes(tmp_path, monkeypatch):
    clip = write_video(tmp_path / "clip.mp4", n=14, w=128, h=96)
    project = new_video_project([(clip, [0, 13])], SCHEMA)
    for path in [r.path for r in project.images]:  # frames 0 and 13 are the references
        project.set_keypoint(path, 0, Keypoint(30.0, 40.0, Visibility.VISIBLE))
        project.set_keypoint(path, 1, Keypoint(64.0, 48.0, Visibility.VISIBLE))
        project.set_status(path, ImageStatus.REFERENCE)
    proj = tmp_path / "v.kpproj.json"
    save_project(project, proj)
    args = ["video", "propagate", str(proj), "--nearest", "1", "--chunk", "5",
            "--extractor", "content", "--preset", "fast", "--no-flip", "--no-soft-argmax",
            "--cache-dir", str(tmp_path / "cache")]
    import annotator.jobs.propagate as prop  # the job imports run_propagation when it runs

    calls = []
    original = prop.run_propagation

    def interrupted(request, engine, state, *a, **k):
        for pred in original(request, engine, state, *a, **k):
            calls.append(pred.path)
            if len(calls) == 7:
                raise KeyboardInterrupt
            yield pred

    monkeypatch.setattr(prop, "run_propagation", interrupted)
    assert main(args) == 130
    half = load_project(proj)
    assert len(half) == 14  # every frame listed
    predicted = half.paths_with_status(ImageStatus.PREDICTED)
    assert len(predicted) == 6  # the chunk that was running kept what it made
    assert len(pending_frames(half)) == 12 - 6
    monkeypatch.setattr(prop, "run_propagation", original)
    calls.clear()
    assert main(args) == 0
    done = load_project(proj)
    assert len(done.paths_with_status(ImageStatus.PREDICTED)) == 12
    assert pending_frames(done) == []
    ann = done.annotation(done.images[5].path)
    assert ann.instances[0].keypoints[1].labelled


def test_video_propagate_refuses_a_project_without_videos(tmp_path, capsys):
    proj = tmp_path / "p.kpproj.json"
    save_project(Project(str(tmp_path), [], SCHEMA), proj)
    assert main(["video", "propagate", str(proj), "--extractor", "content"]) == 2
    assert "no video frames" in capsys.readouterr().err


def test_nearest_zero_is_empty():
    p = _project_with_refs(range(3), refs=[0])
    assert nearest_in_time(p, "a/img001.png", 0) == []


def _fake_run(spikes):
    """A stand-in for run_propagation: keypoint 0 at (frame, 0) or (frame, 100) on a spike
    frame, keypoint 1 never found; one image unreadable."""
    import numpy as np

    from annotator.jobs.propagate import Prediction

    def run(request, engine, state, loader=None):
        for path in request.targets:
            frame = int(path.split("img")[1].split(".")[0])
            if frame == 9:
                yield Prediction(path, error="unreadable")
                continue
            y = 100.0 if frame in spikes else 0.0
            yield Prediction(path, np.array([[frame, y], [7.0, 7.0]]), np.array([0.9, 0.1]),
                             np.array([True, False]), np.array([False, True]), (64, 48))
    return run


def _smoothed_run(monkeypatch, chunk, smooth):
    import annotator.jobs.propagate as prop
    from annotator.jobs.progress import TaskState
    from annotator.jobs.video_propagate import propagate_frames

    recs = [ImageRecord(f"a/img{i:02d}.png", video="a.mp4", frame=i) for i in range(14)]
    recs += [ImageRecord(f"b/img{i:02d}.png", video="b.mp4", frame=i) for i in (20, 21)]
    p = Project("/tmp", recs, SCHEMA)
    p.set_keypoint("a/img00.png", 0, Keypoint(1.0, 2.0, Visibility.VISIBLE))
    p.set_status("a/img00.png", ImageStatus.REFERENCE)
    monkeypatch.setattr(prop, "run_propagation", _fake_run({5, 6, 21}))
    targets = pending_frames(p)
    saves = []
    preds = list(propagate_frames(p, None, TaskState(), targets, chunk=chunk,
                                  checkpoint=saves.append, smooth=smooth))
    return p, preds, saves


def test_temporal_median_smoothing_is_off_by_default_and_chunk_independent(monkeypatch):
    from statistics import median

    raw, raw_preds, _ = _smoothed_run(monkeypatch, 64, 0)
    assert {p.path: p.points[0, 1] for p in raw_preds if not p.error}["a/img05.png"] == 100.0
    results = [_smoothed_run(monkeypatch, chunk, 5) for chunk in (3, 64)]
    for _project, preds, saves in results:
        assert len(preds) == 15 and saves[-1] == 15  # every frame once, the error included
        assert sorted(p.path for p in preds) == sorted(p.path for p in raw_preds)
        assert [p.path for p in preds if p.error] == ["a/img09.png"]
    (p3, preds3, _), (p64, preds64, _) = results
    by3 = {p.path: p for p in preds3 if not p.error}
    by64 = {p.path: p for p in preds64 if not p.error}
    frames = [i for i in range(1, 14) if i != 9]  # video a's predicted frames, in time order
    for pos, i in enumerate(frames):
        window = frames[max(0, pos - 2):pos + 3]  # 5 frames centred (fewer at the ends)
        ys = [100.0 if f in (5, 6) else 0.0 for f in window]
        xs = [float(f) for f in window]
        path = f"a/img{i:02d}.png"
        for got in (by3[path], by64[path]):
            assert got.points[0].tolist() == [median(xs), median(ys)], path
            assert got.points[1].tolist() == [7.0, 7.0]  # not found: unchanged
            assert got.confidence.tolist() == [0.9, 0.1]
        ann = p3.annotation(path)  # applied to the project, in every chunking alike
        assert ann.instances[0].keypoints[0].y == p64.annotation(path).instances[0].keypoints[0].y
    assert by3["a/img05.png"].points[0, 1] == 0.0  # the two-frame spike is gone
    # video b is its own track: its two frames never mix with video a's
    assert by3["b/img20.png"].points[0].tolist() == [20.5, 50.0]


def test_track_smoother_refuses_even_windows():
    import pytest

    from annotator.jobs.video_propagate import TrackSmoother

    with pytest.raises(ValueError, match="odd"):
        TrackSmoother(4, str)


def test_annotator_propagate_video_updates_the_project_resumably(tmp_path, monkeypatch,
                                                                  capsys):
    import json

    clip = write_video(tmp_path / "clip.mp4", n=10, w=128, h=96)
    project = new_video_project([(clip, [0, 9])], SCHEMA)
    for path in [r.path for r in project.images]:
        project.set_keypoint(path, 0, Keypoint(30.0, 40.0, Visibility.VISIBLE))
        project.set_keypoint(path, 1, Keypoint(64.0, 48.0, Visibility.VISIBLE))
        project.set_status(path, ImageStatus.REFERENCE)
    proj = tmp_path / "v.kpproj"
    save_project(project, proj)
    engine = ["--extractor", "content", "--preset", "fast", "--no-flip", "--no-soft-argmax",
              "--cache-dir", str(tmp_path / "cache")]
    assert main(["propagate", str(proj), *engine]) == 2  # neither --out nor --video
    assert "--out is required" in capsys.readouterr().err
    import annotator.jobs.propagate as prop

    original, calls = prop.run_propagation, []

    def interrupted(*a, **k):
        for pred in original(*a, **k):
            calls.append(pred.path)
            if len(calls) == 5:
                raise KeyboardInterrupt
            yield pred

    monkeypatch.setattr(prop, "run_propagation", interrupted)
    args = ["propagate", str(proj), "--video", "--chunk", "3", "--smooth", "3", *engine]
    assert main(args) == 130
    half = load_project(proj)
    assert len(half) == 10 and len(half.paths_with_status(ImageStatus.PREDICTED)) == 2
    monkeypatch.setattr(prop, "run_propagation", original)
    out = tmp_path / "pred.json"
    assert main([*args, "--out", str(out), "--include", "predictions"]) == 0
    done = load_project(proj)
    assert len(done.paths_with_status(ImageStatus.PREDICTED)) == 8
    assert pending_frames(done) == []
    coco = json.loads(out.read_text())
    assert len(coco["images"]) == 10
