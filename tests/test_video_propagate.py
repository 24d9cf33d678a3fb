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
