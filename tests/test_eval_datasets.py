"""Benchmark dataset loaders on tiny fixtures written in each published layout.

The ``make_*`` builders are shared with the other ``test_eval_*`` files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotator.io.datasets import (
    DatasetFormatError,
    PairDataset,
    load_coco_pairs,
    load_pfpascal,
    load_rgb,
    load_spair,
    load_tss,
    read_flo,
    write_flo,
)


def _image(path: Path, w: int, h: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


# --------------------------------------------------------------------------- builders

# SPair: (pair file stem, category, src, trg, src_kps, trg_kps, trg_bndbox -> L)
SPAIR_PAIRS = [
    ("000001-a-b:cat", "cat", "a.jpg", "b.jpg", [[10, 12], [20, 22], [30, 32]],
     [[11, 13], [21, 23], [31, 33]], [10, 10, 110, 60]),      # L = 100
    ("000002-b-a:cat", "cat", "b.jpg", "a.jpg", [[40, 41]], [[42, 43]], [0, 0, 50, 200]),  # 200
    ("000003-c-d:dog", "dog", "c.jpg", "d.jpg", [[5, 6], [7, 8]], [[9, 10], [11, 12]],
     [5, 5, 45, 85]),                                          # L = 80
]


def make_spair(tmp: Path) -> Path:
    root = tmp / "SPair-71k"
    for cat, names in (("cat", ("a", "b")), ("dog", ("c", "d"))):
        for i, n in enumerate(names):
            _image(root / "JPEGImages" / cat / f"{n}.jpg", 64, 48, i)
            ann = {"filename": f"{n}.jpg", "category": cat, "kps": {"0": [1, 2]}}
            (root / "ImageAnnotation" / cat).mkdir(parents=True, exist_ok=True)
            (root / "ImageAnnotation" / cat / f"{n}.json").write_text(json.dumps(ann))
    pair_dir = root / "PairAnnotation" / "test"
    pair_dir.mkdir(parents=True)
    for stem, cat, s, t, sk, tk, box in SPAIR_PAIRS:
        data = {"pair_id": stem, "src_imname": s, "trg_imname": t, "src_imsize": [64, 48, 3],
                "trg_imsize": [64, 48, 3], "src_bndbox": [0, 0, 30, 30], "trg_bndbox": box,
                "category": cat, "src_kps": sk, "trg_kps": tk, "kps_ids": list(range(len(sk))),
                "mirror": 0, "viewpoint_variation": 0}
        (pair_dir / f"{stem}.json").write_text(json.dumps(data))
    return root


def make_pfpascal(tmp: Path) -> Path:
    root = tmp / "PF-dataset-PASCAL"
    _image(root / "JPEGImages" / "2008_1.jpg", 100, 80, 1)   # L = 100 as a target
    _image(root / "JPEGImages" / "2008_2.jpg", 60, 120, 2)   # L = 120 as a target
    _image(root / "JPEGImages" / "2008_3.jpg", 90, 90, 3)
    rows = [["source_image", "target_image", "class", "XA", "YA", "XB", "YB"],
            ["PF-dataset-PASCAL/JPEGImages/2008_2.jpg", "PF-dataset-PASCAL/JPEGImages/2008_1.jpg",
             "8", "10;20;30", "11;21;31", "12;22;32", "13;23;33"],       # cat, L = 100
            ["PF-dataset-PASCAL/JPEGImages/2008_1.jpg", "PF-dataset-PASCAL/JPEGImages/2008_2.jpg",
             "12", "5;6", "7;8", "9;10", "11;12"],                       # dog, L = 120
            ["PF-dataset-PASCAL/JPEGImages/2008_3.jpg", "PF-dataset-PASCAL/JPEGImages/2008_2.jpg",
             "12", "40", "41", "42", "43"]]                              # dog, L = 120
    with open(root / "test_pairs_pf_pascal.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


TSS_FLOW2 = (2.0, -1.0)  # image2 -> image1
TSS_FLOW1 = (-3.0, 1.5)  # image1 -> image2


def make_tss(tmp: Path) -> Path:
    root = tmp / "TSS_CVPR2016"
    for o, (subset, folder) in enumerate((("FG3DCar", "car_001"), ("JODS", "bike_1"))):
        d = root / subset / folder
        _image(d / "image1.png", 40, 30, 1)
        _image(d / "image2.png", 48, 36, 2)
        flow2 = np.zeros((36, 48, 2), np.float32) + np.float32(TSS_FLOW2)
        flow2[o, 0] = 1e10  # unknown vector: never scored
        flow1 = np.zeros((30, 40, 2), np.float32) + np.float32(TSS_FLOW1)
        write_flo(d / "flow2.flo", flow2)
        write_flo(d / "flow1.flo", flow1)
        m2 = np.zeros((36, 48), np.uint8)
        m2[o:o + 6, 0:5] = 255   # 30 pixels, one of them has an unknown flow -> 29
        m1 = np.zeros((30, 40), np.uint8)
        m1[10 + o:14 + o, 10:15] = 255  # 20 pixels
        Image.fromarray(m2).save(d / "mask2.png")
        Image.fromarray(m1).save(d / "mask1.png")
    return root


def make_coco(tmp: Path) -> Path:
    folder = tmp / "coco"
    for i in (1, 2, 3):
        _image(folder / "imgs" / f"{i}.png", 64, 48, i)
    kp = {1: [10, 10, 2, 20, 20, 2, 0, 0, 0, 30, 30, 1],
          2: [11, 11, 2, 21, 21, 2, 31, 31, 2, 0, 0, 0],
          3: [12, 12, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]}
    data = {
        "images": [{"id": i, "file_name": f"imgs/{i}.png", "width": 64, "height": 48}
                   for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "bird", "supercategory": "animal",
                        "keypoints": ["beak", "tail", "left_eye", "right_eye"],
                        "skeleton": [[1, 2]]},
                       {"id": 2, "name": "cup", "keypoints": ["top", "bottom"]}],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "keypoints": kp[i],
             "num_keypoints": 2, "bbox": [0, 0, 40, 20 * i], "area": 100.0, "iscrowd": 0}
            for i in (1, 2, 3)] + [
            {"id": 10, "image_id": 1, "category_id": 2, "keypoints": [5, 5, 2, 6, 6, 2],
             "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0},
            {"id": 11, "image_id": 2, "category_id": 2, "keypoints": [7, 7, 2, 8, 8, 2],
             "bbox": [0, 0, 12, 50], "area": 100.0, "iscrowd": 0},
            {"id": 12, "image_id": 3, "category_id": 2, "keypoints": [0, 0, 0, 0, 0, 0],
             "bbox": [0, 0, 12, 50], "area": 100.0, "iscrowd": 0},  # nothing labelled
        ]}
    path = folder / "keypoints.json"
    path.write_text(json.dumps(data))
    return path


def lookup_predictor(dataset: PairDataset, shift=(0.0, 0.0), lose: frozenset[str] = frozenset()):
    """A predictor answering ground truth + ``shift``; NaN for every point of pairs in ``lose``."""
    table = {}
    for rec in dataset.records:
        s = rec.load()
        key = (hash(load_rgb(s.trg_image).tobytes()), s.src_kps.tobytes())
        assert key not in table, "fixture source keypoints must identify the pair"
        gt = s.trg_kps + np.asarray(shift, dtype=np.float64)
        table[key] = np.full_like(gt, np.nan) if s.pair_id in lose else gt

    def predict(src, trg, kps):
        assert src.ndim == 3 and src.shape[2] == 3 and src.dtype == np.uint8
        return table[(hash(trg.tobytes()), np.asarray(kps, dtype=np.float64).tobytes())]

    return predict


# --------------------------------------------------------------------------- SPair-71k


def test_spair_layout(tmp_path):
    ds = load_spair(make_spair(tmp_path))
    assert len(ds) == 3 and ds.categories == ("cat", "dog")
    samples = list(ds)
    assert [s.norm_length for s in samples] == [100.0, 200.0, 80.0]
    s = samples[0]
    assert s.src_image.name == "a.jpg" and s.trg_image.parent.name == "cat"
    np.testing.assert_array_equal(s.trg_kps, [[11, 13], [21, 23], [31, 33]])
    assert ds.protocol.rule == "lt" and ds.protocol.alphas == (0.1, 0.05, 0.01)
    assert len(load_spair(tmp_path / "SPair-71k", categories=["dog"])) == 1


def test_spair_limit_round_robin(tmp_path):
    ds = load_spair(make_spair(tmp_path)).limited(2)
    assert [r.category for r in ds.records] == ["cat", "dog"]


@pytest.mark.parametrize("field,value,needle", [
    ("trg_bndbox", None, "trg_bndbox: missing"),
    ("trg_kps", [[1, 2]], "trg_kps"),
    ("trg_bndbox", [10, 10, 5, 20], "trg_bndbox: empty box"),
    ("src_kps", "abc", "src_kps"),
    ("trg_imsize", [0, 3], "trg_imsize"),
])
def test_spair_malformed(tmp_path, field, value, needle):
    root = make_spair(tmp_path)
    path = root / "PairAnnotation" / "test" / "000001-a-b:cat.json"
    data = json.loads(path.read_text())
    if value is None:
        del data[field]
    else:
        data[field] = value
    path.write_text(json.dumps(data))
    ds = load_spair(root)
    with pytest.raises(DatasetFormatError) as err:
        ds.records[0].load()
    assert "000001-a-b:cat.json" in str(err.value) and needle in str(err.value)


def test_spair_bad_json_and_missing_split(tmp_path):
    root = make_spair(tmp_path)
    (root / "PairAnnotation" / "test" / "000001-a-b:cat.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        load_spair(root).records[0].load()
    with pytest.raises(DatasetFormatError, match="PairAnnotation"):
        load_spair(root, "val")


# --------------------------------------------------------------------------- PF-Pascal


def test_pfpascal_layout(tmp_path):
    ds = load_pfpascal(make_pfpascal(tmp_path))
    assert len(ds) == 3 and ds.categories == ("cat", "dog")
    s = list(ds)
    assert [x.norm_length for x in s] == [100.0, 120.0, 120.0]
    np.testing.assert_array_equal(s[0].src_kps, [[10, 11], [20, 21], [30, 31]])
    np.testing.assert_array_equal(s[0].trg_kps, [[12, 13], [22, 23], [32, 33]])
    assert s[0].src_image.name == "2008_2.jpg"
    assert ds.protocol.alphas == (0.05, 0.1, 0.15)


@pytest.mark.parametrize("col,value,needle", [
    (4, "11;21", "coordinate lists"),
    (2, "21", "class"),
    (3, "10;x;30", "XA"),
    (1, "PF-dataset-PASCAL/JPEGImages/missing.jpg", "missing.jpg"),
])
def test_pfpascal_malformed(tmp_path, col, value, needle):
    root = make_pfpascal(tmp_path)
    path = root / "test_pairs_pf_pascal.csv"
    rows = list(csv.reader(open(path, newline="")))
    rows[1][col] = value
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(DatasetFormatError) as err:
        load_pfpascal(root)
    assert "test_pairs_pf_pascal.csv" in str(err.value) and needle in str(err.value)


# --------------------------------------------------------------------------- TSS / .flo


def test_flo_roundtrip_and_errors(tmp_path):
    flow = np.random.default_rng(0).normal(size=(5, 7, 2)).astype(np.float32)
    write_flo(tmp_path / "f.flo", flow)
    np.testing.assert_array_equal(read_flo(tmp_path / "f.flo"), flow)
    raw = (tmp_path / "f.flo").read_bytes()
    (tmp_path / "short.flo").write_bytes(raw[:-4])
    with pytest.raises(DatasetFormatError, match="short.flo: data"):
        read_flo(tmp_path / "short.flo")
    (tmp_path / "magic.flo").write_bytes(b"XXXX" + raw[4:])
    with pytest.raises(DatasetFormatError, match="magic"):
        read_flo(tmp_path / "magic.flo")


def test_tss_both_directions(tmp_path):
    ds = load_tss(make_tss(tmp_path))
    assert len(ds) == 4 and ds.categories == ("FG3DCar", "JODS")
    assert ds.protocol.rule == "le"
    s21, s12 = ds.records[0].load(), ds.records[1].load()
    # direction 2 -> 1: foreground of mask2 (minus the unknown-flow pixel), into image1 (40 x 30)
    assert s21.src_image.name == "image2.png" and s21.trg_image.name == "image1.png"
    assert s21.num_points == 29 and s21.norm_length == 40.0
    np.testing.assert_allclose(s21.trg_kps - s21.src_kps, np.tile(TSS_FLOW2, (29, 1)))
    assert s12.num_points == 20 and s12.norm_length == 48.0
    np.testing.assert_allclose(s12.trg_kps - s12.src_kps, np.tile(TSS_FLOW1, (20, 1)))
    assert s21.meta["object"] == "car"
    strided = load_tss(tmp_path / "TSS_CVPR2016", stride=2).records[1].load()
    assert strided.num_points == 6  # rows 10, 12 x cols 10, 12, 14


def test_tss_malformed(tmp_path):
    root = make_tss(tmp_path)
    d = root / "JODS" / "bike_1"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(d / "mask1.png")
    ds = load_tss(root)
    with pytest.raises(DatasetFormatError, match="mask1.png: size"):
        ds.records[3].load()
    (d / "flow2.flo").unlink()
    with pytest.raises(DatasetFormatError, match="flow2.flo: file: not found"):
        load_tss(root)


# --------------------------------------------------------------------------- COCO


def test_coco_pairs(tmp_path):
    ds = load_coco_pairs(make_coco(tmp_path), tmp_path / "coco")
    # bird: 3 x 2 ordered pairs all share keypoint 0; cup: 10 <-> 11 only (12 has none)
    assert len(ds) == 8 and ds.categories == ("bird", "cup")
    by_id = {r.pair_id: r.load() for r in ds.records}
    s = by_id["bird/1->2"]
    np.testing.assert_array_equal(s.src_kps, [[10, 10], [20, 20]])
    np.testing.assert_array_equal(s.trg_kps, [[11, 11], [21, 21]])
    assert s.norm_length == 40.0  # bbox of annotation 2: max(40, 40)
    assert by_id["bird/2->3"].num_points == 1 and by_id["bird/1->3"].norm_length == 60.0
    assert by_id["cup/10->11"].norm_length == 50.0
    img = load_coco_pairs(make_coco(tmp_path), threshold="image")
    assert img.records[0].load().norm_length == 64.0


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["annotations"][0].update(keypoints=[1, 2, 2]), "keypoints"),
    (lambda d: d["annotations"][0].update(category_id=99), "category_id"),
    (lambda d: d["annotations"][1].update(bbox=[0, 0, 0, 0]), "bbox"),
    (lambda d: d.pop("categories"), "categories: missing"),
    (lambda d: d["images"][0].update(file_name="../escape.png"), "file_name"),
])
def test_coco_malformed(tmp_path, mutate, needle):
    path = make_coco(tmp_path)
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError) as err:
        ds = load_coco_pairs(path)
        for r in ds.records:
            r.load()
    assert "keypoints.json" in str(err.value) and needle in str(err.value)
