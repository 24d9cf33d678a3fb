"""Crop transfer in the evaluator (``eval --crop bbox``) and the small-objects geometry case."""

import json

import cv2
import numpy as np
import pytest

from annotator.cli import main
from annotator.engine import Engine
from annotator.features.config import preset
from annotator.features.content import ContentExtractor
from annotator.io.datasets import PairDataset, PairRecord, PairSample, load_coco_pairs, load_spair
from annotator.jobs.evaluate import CropPredictor, engine_predictor, evaluate
from annotator.jobs.geometry import (
    SMALL_OBJECTS_PROTOCOL,
    SmallObjectsConfig,
    make_small_objects_dataset,
    run_small_objects_benchmark,
)
from tests.test_eval_datasets import make_coco, make_spair


def test_datasets_carry_instance_boxes(tmp_path):
    s = load_spair(make_spair(tmp_path)).records[0].load()
    assert s.meta["src_bbox"] == (0, 0, 30, 30) and s.meta["trg_bbox"] == (10, 10, 100, 50)
    c = {r.pair_id: r.load() for r in load_coco_pairs(make_coco(tmp_path)).records}
    assert c["bird/1->2"].meta["src_bbox"] == (0, 0, 40, 20)
    assert c["bird/1->2"].meta["trg_bbox"] == (0, 0, 40, 40)


def test_crop_predictor_maps_crop_answers_back_and_drops_outside_points():
    seen = {}

    def predictor(src, trg, kps):  # answers in crop pixels: the query moved by (3, 14)
        seen["shapes"] = (src.shape, trg.shape)
        return kps + (3.0, 14.0)

    src = np.zeros((100, 200, 3), np.uint8)
    trg = np.zeros((300, 400, 3), np.uint8)
    crop = CropPredictor(predictor, margin=0.0)
    kps = np.array([[15.0, 25.0], [49.0, 59.0]])
    out = crop(src, trg, kps, (10, 20, 40, 40), (100, 200, 50, 50))
    assert seen["shapes"] == ((40, 40, 3), (50, 50, 3))
    # (15, 25) -> crop (5, 5) -> (8, 19) -> target (108, 219); (49, 59) -> (42, 53): outside
    np.testing.assert_allclose(out[0], [108, 219])
    assert np.isnan(out[1]).all()


def test_crop_evaluation_needs_boxes():
    sample = PairSample("p", "c", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8),
                        np.ones((1, 2)), np.ones((1, 2)), 8.0)
    ds = PairDataset("nobox", None, (PairRecord("p", "c", lambda: sample),),
                     SMALL_OBJECTS_PROTOCOL, "x")
    with pytest.raises(ValueError, match="no source and target boxes"):
        evaluate(ds, CropPredictor(lambda s, t, k: k))


def test_small_objects_ground_truth_is_exact():
    """Same size, so the target copy is the source copy moved (and maybe mirrored): the
    pixels under corresponding ground-truth points agree."""
    cfg = SmallObjectsConfig(images=("astronaut", "coffee", "chelsea"), object_side=(120, 120),
                             pairs_per_image=1, mirror_every=2, keypoints=10)
    ds = make_small_objects_dataset(cfg)
    kinds = set()
    for rec in ds.records:
        s = rec.load()
        kinds.add(s.category)
        for pts, box in ((s.src_kps, s.meta["src_bbox"]), (s.trg_kps, s.meta["trg_bbox"])):
            x, y, w, h = box
            assert (pts[:, 0] >= x).all() and (pts[:, 0] <= x + w - 1).all()
            assert (pts[:, 1] >= y).all() and (pts[:, 1] <= y + h - 1).all()
        assert s.norm_length == max(s.meta["trg_bbox"][2:])
        sample = lambda img, p: cv2.remap(  # noqa: E731
            img, p[:, :1].astype(np.float32), p[:, 1:].astype(np.float32), cv2.INTER_LINEAR)
        a = sample(s.src_image, s.src_kps).astype(float)
        b = sample(s.trg_image, s.trg_kps).astype(float)
        assert np.abs(a - b).mean() < 2.0, s.pair_id
    assert kinds == {"mirrored", "same side"}


def test_crop_transfer_beats_whole_image_on_small_objects():
    cfg = SmallObjectsConfig(images=("astronaut", "coffee", "chelsea"), pairs_per_image=1,
                             keypoints=10)
    eng = Engine(config=preset("fast", softargmax_window=0, flip=True),
                 extractor=ContentExtractor())
    res = run_small_objects_benchmark(engine_predictor(eng), cfg)
    whole = res["whole image"].table.overall.per_keypoint[1]  # PCK@0.1 of the box
    crop = res["crop"].table.overall.per_keypoint[1]
    assert crop >= 0.9 and crop > whole + 0.3, (whole, crop)


def test_eval_cli_crop_flag(tmp_path, capsys):
    ann = make_coco(tmp_path)
    args = ["eval", "coco", "--annotations", str(ann), "--extractor", "content", "--preset",
            "fast", "--no-cache", "--out", str(tmp_path / "r")]
    assert main([*args, "--crop", "bbox"]) == 0
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "crop" in json.dumps(doc) and "bbox" in json.dumps(doc)
    assert "PCK@0.1" in capsys.readouterr().out


def test_geometry_cli_small_objects(tmp_path, capsys):
    out = tmp_path / "so"
    assert main(["geometry", "--small-objects", "--images", "astronaut", "coffee", "--preset",
                 "fast", "--flip", "--no-cache", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "content, whole image" in text and "content, crop" in text
    doc = json.loads((out / "small_objects.json").read_text())
    assert "crop" in json.dumps(doc)
