"""Crop transfer at the canvas the reference crops' size calls for (issue 19): an engine at the
fast preset's canvas sharing the models, chosen when the references' crops are large."""

from __future__ import annotations

import numpy as np
import pytest

from annotator import references
from annotator.engine import Engine
from annotator.features.config import FAST, preset
from annotator.features.content import ContentConfig, ContentExtractor
from tests.tiny_models import TINY, build_tiny_models

COLOURS = ((230, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 20))


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured grey 128 x 128 image with four small coloured squares at random places;
    the keypoints are their centres (K = 4)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 140, (128, 128, 3)).astype(np.uint8)
    pts = []
    for colour in COLOURS:
        while True:
            x, y = rng.integers(12, 116, 2)
            if all(max(abs(x - a), abs(y - b)) > 14 for a, b in pts):
                break
        img[y - 3:y + 4, x - 3:x + 4] = colour
        pts.append((float(x), float(y)))
    return img, np.array(pts)


def _engine(grid: int) -> Engine:
    return Engine(config=preset("fast", fusion="dino"),
                  extractor=ContentExtractor(ContentConfig(size=128, grid=grid)))


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


def test_an_engine_at_another_resolution_shares_the_models(tiny_dirs):
    eng = Engine.from_pretrained(sd_model=str(tiny_dirs[0]), dino_model=str(tiny_dirs[1]),
                                 preset=TINY, device="cpu", dtype="fp32")
    coarse_cfg = TINY.replace(dino_size=112, grid=8)
    other = eng.with_config(coarse_cfg)
    assert other is not None and other.config == coarse_cfg
    assert other.extractor.dino is eng.extractor.dino and other.extractor.sd is eng.extractor.sd
    assert other.fingerprint != eng.fingerprint  # its own cache entries
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    assert other.features(image).layers["dino"].shape[-1] == 8
    assert eng.features(image).layers["dino"].shape[-1] == 12
    # a config needing a model the engine does not have: no engine
    dino_only = Engine.from_pretrained(dino_model=str(tiny_dirs[1]), preset=TINY,
                                       fusion="dino", device="cpu", dtype="fp32")
    assert dino_only.with_config(TINY) is None
    # the paper resolution has a coarser variant, the fast one and plugged extractors none
    paper = eng.with_config(preset("paper"))
    coarse = references.coarse_engine(paper)  # the fast preset's canvas, the same models
    assert coarse is not None and coarse.extractor.dino is eng.extractor.dino
    assert (coarse.config.dino_size, coarse.config.grid) == (FAST.dino_size, FAST.grid)
    assert coarse.config.fusion == paper.config.fusion
    assert references.coarse_engine(coarse) is None
    assert references.coarse_engine(_engine(32)) is None


def _request(tmp_path, settings):
    from PIL import Image

    from annotator.jobs.propagate import PropagateRequest, ReferenceSpec

    specs = []
    for seed in range(3):
        img, pts = _scene(seed)
        Image.fromarray(img).save(tmp_path / f"r{seed}.png")
        specs.append(ReferenceSpec(f"r{seed}.png", tuple(map(tuple, pts)), (True,) * 4,
                                   (4.0, 4.0, 120.0, 120.0)))
    target, truth = _scene(99)
    Image.fromarray(target).save(tmp_path / "t.png")
    boxes = (("t.png", ((4.0, 4.0, 120.0, 120.0),)),)
    return PropagateRequest(str(tmp_path), tuple(specs), ("t.png",), (), settings, 0,
                            boxes), truth


@pytest.mark.parametrize("crop_canvas, crop, lands", [
    ("auto", "bbox", True),  # crops matched by the engine crop_engine gives
    ("preset", "bbox", False),  # the preset's canvas: the project's engine
    ("auto", "none", False),  # whole images: the project's engine
])
def test_crop_transfer_runs_on_the_engine_the_crop_size_chose(monkeypatch, tmp_path,
                                                              crop_canvas, crop, lands):
    from annotator.domain.project import ProjectSettings
    from annotator.jobs.progress import TaskState
    from annotator.jobs.propagate import run_propagation

    fine = _engine(32)
    seen = []

    def choose(engine, crops):
        seen.append([max(c.pixels.shape[:2]) for c in crops])
        return fine

    monkeypatch.setattr(references, "crop_engine", choose)
    settings = ProjectSettings(combine="prototype", crop=crop, crop_canvas=crop_canvas,
                               prior_weight=0.0, flip=False)
    request, truth = _request(tmp_path, settings)
    coarse = _engine(4)  # the project's engine: 32 px cells cannot place a 7 px square
    (pred,) = run_propagation(request, coarse, TaskState())
    (inst,) = pred.instances()
    err = np.hypot(*(inst.points - truth).T)
    assert (err.max() < 4.0) == lands, err
    assert seen == ([[128, 128, 128]] if lands else [])  # the references' crops decide


def test_large_reference_crops_are_matched_at_the_coarse_canvas(tiny_dirs):
    eng = Engine.from_pretrained(sd_model=str(tiny_dirs[0]), dino_model=str(tiny_dirs[1]),
                                 preset=TINY, device="cpu", dtype="fp32")
    paper = eng.with_config(preset("paper"))
    rng = np.random.default_rng(0)

    def crops(*sides):
        return [rng.integers(0, 256, (s, s - 10, 3), dtype=np.uint8) for s in sides]

    coarse = references.crop_engine(paper, crops(300, 230, 100))  # median 230 >= 224
    assert coarse is not paper and coarse.config.canvas_size == FAST.canvas_size
    assert references.crop_engine(paper, crops(300, 200, 100)) is paper  # median 200
    assert references.crop_engine(paper, []) is paper
    assert references.crop_engine(coarse, crops(1000)) is coarse  # nothing coarser
    plugged = _engine(32)
    assert references.crop_engine(plugged, crops(1000)) is plugged
