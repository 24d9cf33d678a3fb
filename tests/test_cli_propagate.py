"""``annotator propagate`` end to end: reference labels in, valid COCO with predictions out."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from skimage import data

from annotator.cli import main
from annotator.domain import Keypoint, KeypointSchema, Visibility
from annotator.io.coco import write_coco
from annotator.io.project_file import new_project, save_project
from tests.tiny_models import TINY

POINTS = [(120.0, 100.0), (300.0, 150.0), (200.0, 300.0), (400.0, 380.0)]


@pytest.fixture
def folder(tmp_path):
    """A reference photo, two views of it and one unreadable file."""
    root = tmp_path / "imgs"
    root.mkdir()
    img = data.astronaut()  # 512 x 512
    Image.fromarray(img).save(root / "ref.png")
    shifted = np.zeros_like(img)
    shifted[48:, 32:] = img[:-48, :-32]  # content moved by whole cells (16 px = 14 canvas px)
    Image.fromarray(shifted).save(root / "crop.png")
    Image.fromarray(np.ascontiguousarray(img[::2, ::2])).save(root / "small.png")
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def labelled_project(root):
    schema = KeypointSchema("thing", ("a", "left_b", "right_b", "d"), flip_pairs=((1, 2),))
    p = new_project(root, schema)
    for i, (x, y) in enumerate(POINTS):
        p.set_keypoint("ref.png", i, Keypoint(x, y, Visibility.VISIBLE))
    return p


def test_propagate_from_project_with_content_descriptor(tmp_path, folder, capsys):
    proj = tmp_path / "p.kpproj.json"
    save_project(labelled_project(folder), proj)
    out = tmp_path / "out.json"
    cache = tmp_path / "cache"
    args = [str(proj), "--out", str(out), "--extractor", "content", "--preset", "fast",
            "--no-flip", "--no-soft-argmax", "--cache-dir", str(cache)]
    assert main(["propagate", *args]) == 0
    printed = capsys.readouterr()
    assert "broken.jpg" in printed.err
    coco = COCO(str(out))
    doc = json.loads(out.read_text())
    by_name = {im["file_name"]: im["id"] for im in doc["images"]}
    anns = {a["image_id"]: a for a in doc["annotations"]}
    crop = anns[by_name["crop.png"]]
    assert all(s is not None and 0 <= s <= 1 for s in crop["keypoint_scores"])
    assert crop["keypoint_origins"] == ["predicted"] * 4
    pts = np.array(crop["keypoints"]).reshape(-1, 3)
    truth = np.array(POINTS) + [32, 48]
    # within one cell of the fast preset: 14 canvas px = 16 image px
    assert np.all(np.abs(pts[:, :2] - truth) <= 16)
    small = anns[by_name["small.png"]]
    pts = np.array(small["keypoints"]).reshape(-1, 3)
    assert np.all(np.abs(pts[:, :2] - np.array(POINTS) / 2) <= 9)
    assert "broken.jpg" not in by_name  # unreadable and unlabelled: not exported
    assert coco.getAnnIds() and "0 computed" not in printed.out
    # second run: every feature comes from the disk cache
    assert main(["propagate", *args]) == 0
    assert "0 computed" in capsys.readouterr().out


def test_propagate_from_coco_with_tiny_models(tmp_path, folder, tiny_model_dirs, capsys):
    sd_dir, dino_dir = tiny_model_dirs
    shutil.rmtree(folder / "broken.jpg", ignore_errors=True)
    (folder / "broken.jpg").unlink()
    p = labelled_project(folder)
    refs_only = tmp_path / "refs.json"
    write_coco(p, refs_only)
    doc = json.loads(refs_only.read_text())
    # a COCO file listing only the reference: the other images of the folder are targets
    doc["images"] = [im for im in doc["images"] if im["file_name"] == "ref.png"]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] == doc["images"][0]["id"]]
    (folder / "refs.json").write_text(json.dumps(doc))
    config = tmp_path / "tiny.json"
    fields = {k: getattr(TINY, k) for k in ("sd_size", "sd_tile", "sd_tile_offsets", "dino_size",
                                            "grid", "pca_dim", "dino_layer")}
    config.write_text(json.dumps({**fields, "preset": "tiny"}))
    out = tmp_path / "pred.json"
    args = ["propagate", str(folder / "refs.json"), "--out", str(out), "--sd-model", str(sd_dir),
            "--dino-model", str(dino_dir), "--feature-config", str(config), "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    first = capsys.readouterr().out
    coco = COCO(str(out))
    assert len(coco.getImgIds()) == 3
    preds = [a for a in coco.loadAnns(coco.getAnnIds()) if "predicted" in a["keypoint_origins"]]
    assert len(preds) == 2  # crop.png and small.png
    for a in preds:
        scores = a["keypoint_scores"]
        assert len(scores) == 4 and all(s is not None for s in scores)
    # the reference and two targets, and the crops around the boxes found in each (the
    # prototype rule matches no mirrored reference)
    assert "6 computed" in first
    assert main(args) == 0
    assert "0 computed" in capsys.readouterr().out


def test_propagate_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": 3}')
    with pytest.raises(SystemExit, match="bad.json"):
        main(["propagate", str(bad), "--out", str(tmp_path / "o.json"), "--extractor", "content"])
