"""The evaluation harness end to end: exact PCK on fixtures, reports, progress, CLI, geometry."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from annotator.io.datasets import load_coco_pairs, load_pfpascal, load_spair, load_tss
from annotator.jobs.evaluate import EvalConfig, engine_predictor, evaluate
from annotator.jobs.geometry import (
    GeometryConfig,
    make_geometry_dataset,
    oracle_predictor,
    run_geometry_benchmark,
)
from annotator.jobs.progress import Cancelled, TaskState
from annotator.jobs.report import write_report
from tests.test_eval_datasets import (
    lookup_predictor,
    make_coco,
    make_pfpascal,
    make_spair,
    make_tss,
)


def _overall(res):
    return res.table.overall.per_keypoint, res.table.overall.per_image


def test_ground_truth_scores_one_everywhere(tmp_path):
    datasets = [load_spair(make_spair(tmp_path)), load_pfpascal(make_pfpascal(tmp_path)),
                load_tss(make_tss(tmp_path)), load_coco_pairs(make_coco(tmp_path))]
    for ds in datasets:
        res = evaluate(ds, lookup_predictor(ds))
        kp, im = _overall(res)
        assert kp == im == (1.0,) * len(ds.protocol.alphas), ds.name
        assert all(st.per_keypoint == (1.0,) * len(res.alphas)
                   for st in res.table.per_category.values())
        assert res.curve.overall.per_keypoint == (1.0,) * len(res.curve_alphas)


def test_spair_known_shift(tmp_path):
    ds = load_spair(make_spair(tmp_path))
    # error 5 px; L = 100, 200, 80 -> thresholds at 0.05: 5, 10, 4 -> only pair 2 (1 point)
    res = evaluate(ds, lookup_predictor(ds, shift=(3.0, 4.0)))
    assert res.alphas == (0.1, 0.05, 0.01) and res.rule == "lt"
    kp, im = _overall(res)
    assert kp == (1.0, 1 / 6, 0.0) and im == pytest.approx((1.0, 1 / 3, 0.0))
    assert res.table.per_category["cat"].per_keypoint == (1.0, 0.25, 0.0)
    assert res.table.per_category["cat"].per_image == (1.0, 0.5, 0.0)
    assert res.table.per_category["dog"].per_keypoint == (1.0, 0.0, 0.0)
    assert res.table.category_mean == (1.0, 0.125, 0.0)
    le = evaluate(ds, lookup_predictor(ds, shift=(3.0, 4.0)), EvalConfig(rule="le"))
    assert _overall(le)[0] == (1.0, 4 / 6, 0.0)  # pair 1 sits exactly on its threshold


def test_not_found_counts_as_wrong(tmp_path):
    ds = load_spair(make_spair(tmp_path))
    res = evaluate(ds, lookup_predictor(ds, lose=frozenset({"000003-c-d:dog"})),
                   EvalConfig(alphas=(0.1,)))
    assert _overall(res) == ((4 / 6,), (2 / 3,))
    assert res.table.per_category["dog"].per_keypoint == (0.0,)
    assert [s.num_found for s in res.scores] == [3, 1, 0]


def test_pfpascal_known_shift(tmp_path):
    ds = load_pfpascal(make_pfpascal(tmp_path))
    # error 5; L = 100, 120, 120 -> at 0.05: 5 (not < 5), 6, 6
    res = evaluate(ds, lookup_predictor(ds, shift=(-3.0, 4.0)))
    kp, im = _overall(res)
    assert kp == (0.5, 1.0, 1.0) and im == pytest.approx((2 / 3, 1.0, 1.0))


def test_tss_rule_and_directions(tmp_path):
    ds = load_tss(make_tss(tmp_path))
    # error 2 px; L = 40 (into image1) and 48 (into image2): 0.05 -> 2.0 and 2.4
    res = evaluate(ds, lookup_predictor(ds, shift=(0.0, 2.0)), EvalConfig(alphas=(0.05,)))
    assert res.rule == "le" and _overall(res) == ((1.0,), (1.0,))
    lt = evaluate(ds, lookup_predictor(ds, shift=(0.0, 2.0)), EvalConfig(alphas=(0.05,),
                                                                         rule="lt"))
    assert _overall(lt) == ((40 / 98,), (0.5,))


def test_limit_and_progress_and_cancel(tmp_path):
    ds = load_spair(make_spair(tmp_path))
    seen = []
    state = TaskState(on_progress=lambda p: seen.append((p.done, p.total)))
    res = evaluate(ds, lookup_predictor(ds), EvalConfig(limit=2), progress=state)
    assert res.table.overall.num_pairs == 2 and res.total_pairs == 3
    assert seen == [(0, 2), (1, 2), (2, 2)]

    state = TaskState(on_progress=lambda p: state.cancel() if p.done == 1 else None)
    with pytest.raises(Cancelled):
        evaluate(ds, lookup_predictor(ds), progress=state)
    duck = SimpleNamespace(cancelled=False, calls=[])
    duck.report = lambda done, total: duck.calls.append(done)
    evaluate(ds, lookup_predictor(ds), progress=duck)
    assert duck.calls == [0, 1, 2, 3]
    duck.cancelled = True
    with pytest.raises(Cancelled):
        evaluate(ds, lookup_predictor(ds), progress=duck)


def test_engine_adapter_marks_not_found():
    class FakeEngine:
        def transfer(self, ref, pts, trg, flip_pairs=()):
            assert flip_pairs == ((0, 1),)
            return SimpleNamespace(points=pts + 1, found=np.array([True, False]),
                                   confidence=np.ones(2))

    pred = engine_predictor(FakeEngine(), flip_pairs=[(0, 1)])(None, None, np.zeros((2, 2)))
    assert pred[0].tolist() == [1.0, 1.0] and np.isnan(pred[1]).all()
    assert engine_predictor(FakeEngine())(None, None, np.zeros((0, 2))).shape == (0, 2)


def test_report_files(tmp_path):
    ds = load_spair(make_spair(tmp_path))
    res = evaluate(ds, lookup_predictor(ds, shift=(3.0, 4.0)), settings={"extractor": "test"})
    files = write_report(res, tmp_path / "out")
    md = files.markdown.read_text()
    assert "| ours | per-keypoint (pooled) | 100.0 | 16.7 | 0.0 |" in md
    assert "| ours | per-image | 100.0 | 33.3 | 0.0 |" in md
    assert "error < alpha * L (strict)" in md
    assert "SD+DINO fused" in md and "64.0" in md and "GeoAware" in md
    assert "| cat | 2 | 4 |" in md
    data = json.loads(files.json.read_text())
    run = data["runs"]["ours"]
    assert run["rule"] == "lt" and run["overall"]["per_keypoint"][1] == pytest.approx(1 / 6)
    assert run["per_category"]["dog"]["num_points"] == 2 and len(run["pairs"]) == 3
    assert files.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- geometry


SMALL = GeometryConfig(images=("astronaut", "camera"), keypoints=8, max_side=128, seed=3)


def test_geometry_ground_truth_is_consistent():
    ds = make_geometry_dataset(SMALL)
    assert len(ds) == 6 and ds.categories == ("mirror", "perspective", "similarity")
    for sample in ds:
        assert sample.num_points > 0
        src, trg = sample.src_image, sample.trg_image
        xs, ys = sample.src_kps.astype(int).T
        gx, gy = np.round(sample.trg_kps).astype(int).T
        assert np.all((gx >= 0) & (gx < trg.shape[1]) & (gy >= 0) & (gy < trg.shape[0]))
        # warped pixel at the ground truth ~ source pixel (interpolation blur allowed)
        diff = np.abs(src[ys, xs].astype(int) - trg[gy, gx].astype(int)).mean()
        assert diff < 40, (sample.pair_id, diff)
    res = run_geometry_benchmark({"oracle": oracle_predictor(ds)}, SMALL)["oracle"]
    assert res.table.overall.per_keypoint == (1.0,) * 4


def _cli(argv):
    from annotator.cli import main

    return main(argv)


@pytest.mark.parametrize("kind", ["spair", "pfpascal", "tss", "coco"])
def test_cli_eval_content_engine_writes_report(tmp_path, kind):
    pytest.importorskip("annotator.engine")
    if kind == "coco":
        ann = make_coco(tmp_path)
        args = ["--annotations", str(ann), "--root", str(ann.parent)]
    else:
        root = {"spair": make_spair, "pfpascal": make_pfpascal, "tss": make_tss}[kind](tmp_path)
        args = ["--root", str(root)] + (["--tss-stride", "3"] if kind == "tss" else [])
    out = tmp_path / "report"
    rc = _cli(["eval", kind, *args, "--extractor", "content", "--no-cache", "--limit", "3",
               "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "report.json").read_text())
    run = data["runs"]["ours"]
    assert run["overall"]["num_pairs"] == 3 and run["settings"]["extractor"] == "content"
    assert (out / "report.md").is_file() and (out / "report_pck.png").is_file()


def test_cli_eval_rejects_malformed(tmp_path, capsys):
    root = make_spair(tmp_path)
    (root / "PairAnnotation" / "test" / "000001-a-b:cat.json").write_text('{"category": "cat"}')
    rc = _cli(["eval", "spair", "--root", str(root), "--extractor", "content", "--no-cache",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "src_imname: missing" in capsys.readouterr().err
    assert _cli(["eval", "spair", "--extractor", "content"]) == 2


def test_cli_geometry_content(tmp_path):
    pytest.importorskip("annotator.engine")
    out = tmp_path / "geo"
    rc = _cli(["geometry", "--images", "astronaut", "--keypoints", "6", "--max-side", "128",
               "--no-cache", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "geometry.json").read_text())
    assert list(data["runs"]) == ["content"]
    assert set(data["runs"]["content"]["per_category"]) == {"mirror", "perspective",
                                                            "similarity"}
    assert (out / "geometry.md").is_file() and (out / "geometry_pck.png").is_file()


def test_cli_eval_tiny_sd_dino(tmp_path, tiny_model_dirs):
    """End to end through the real SD + DINOv2 loading path on tiny random models."""
    from tests.tiny_models import TINY

    sd_dir, dino_dir = tiny_model_dirs
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(dataclasses.asdict(TINY)))
    out = tmp_path / "report"
    rc = _cli(["eval", "pfpascal", "--root", str(make_pfpascal(tmp_path)), "--sd-model",
               str(sd_dir), "--dino-model", str(dino_dir), "--feature-config", str(cfg),
               "--device", "cpu", "--no-cache", "--limit", "2", "--out", str(out)])
    assert rc == 0
    run = json.loads((out / "report.json").read_text())["runs"]["ours"]
    assert run["overall"]["num_pairs"] == 2 and run["settings"]["extractor"] == "sd-dino"
