import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annotator.features.config import (
    FAST,
    PAPER,
    FeatureConfig,
    ModelSource,
    RuntimeConfig,
    preset,
    resolve_device,
    resolve_dtype,
    sd_dino_fingerprint,
)
from annotator.features.letterbox import Letterbox


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 4000), h=st.integers(1, 4000), size=st.sampled_from([168, 448, 840, 960]),
       fx=st.floats(0, 1), fy=st.floats(0, 1))
def test_letterbox_round_trip(w, h, size, fx, fy):
    lb = Letterbox.fit(w, h, size)
    assert max(lb.content_w, lb.content_h) == size
    pts = np.array([[fx * (w - 1), fy * (h - 1)], [0, 0], [w - 1, h - 1]])
    back = lb.from_canvas(lb.to_canvas(pts))
    np.testing.assert_allclose(back, pts, atol=1e-9 * max(w, h))
    assert lb.contains(lb.to_canvas(pts)).all()


@pytest.mark.parametrize("w,h", [(300, 200), (200, 300), (250, 250)])
def test_letterbox_apply_and_padding(w, h):
    img = np.full((h, w, 3), 200, np.uint8)
    lb = Letterbox.fit(w, h, 100)
    canvas = lb.apply(img)
    assert canvas.shape == (100, 100, 3)
    inside = canvas[lb.offset_y:lb.offset_y + lb.content_h, lb.offset_x:lb.offset_x + lb.content_w]
    assert (inside == 200).all()
    assert canvas.sum() == inside.sum()  # padding is black
    grid = np.stack(np.meshgrid(np.arange(100), np.arange(100)), -1).reshape(-1, 2)
    mask = lb.contains(grid).reshape(100, 100)
    assert (mask == (canvas[..., 0] > 0)).all()
    # centred
    assert abs(lb.offset_x - (100 - lb.content_w - lb.offset_x)) <= 1
    with pytest.raises(ValueError):
        lb.apply(img[:-1])
    with pytest.raises(ValueError):
        lb.to_canvas(np.zeros((3, 3)))


def test_presets_and_grids():
    assert (PAPER.sd_size, PAPER.sd_tile, PAPER.sd_tile_offsets) == (960, 512, (0, 448))
    assert (PAPER.timestep, PAPER.seed, PAPER.prompt, PAPER.grid) == (100, 42, "", 60)
    assert PAPER.cell_size == 14 and PAPER.dino_layer == 12
    assert FAST.grid == 32 and FAST.sd_tile_offsets == (0,) and FAST.cell_size == 14
    assert preset("fast") is FAST
    assert preset("paper", fusion="concat").fusion == "concat"
    with pytest.raises(ValueError):
        preset("nope")
    with pytest.raises(ValueError):
        FeatureConfig(fusion="bad")
    with pytest.raises(ValueError):
        FeatureConfig(sd_tile_offsets=(0, 400))
    with pytest.raises(ValueError):
        FeatureConfig(dino_size=448)  # grid mismatch


def test_fingerprint_changes_with_features_only():
    src = ModelSource()
    base = sd_dino_fingerprint(PAPER, src, "fp32")
    assert base == sd_dino_fingerprint(PAPER.replace(softargmax_window=5), src, "fp32")
    assert base != sd_dino_fingerprint(PAPER.replace(timestep=200), src, "fp32")
    assert base != sd_dino_fingerprint(PAPER, src, "fp16")
    assert base != sd_dino_fingerprint(PAPER, ModelSource(sd_revision="abc"), "fp32")


def test_model_source_env(monkeypatch):
    monkeypatch.setenv("ANNOTATOR_SD_MODEL", "/x/sd")
    monkeypatch.setenv("ANNOTATOR_DINO_MODEL", "/x/dino")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = ModelSource.from_env()
    assert (s.sd_model, s.dino_model, s.local_files_only) == ("/x/sd", "/x/dino", True)
    assert ModelSource.from_env(sd_model="other").sd_model == "other"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("ANNOTATOR_SD_MODEL")
    assert ModelSource.from_env().sd_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_runtime_device_dtype():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError):
        RuntimeConfig(device="tpu")
    with pytest.raises(ValueError):
        RuntimeConfig(dtype="int8")
    with pytest.raises(ValueError, match="fp16"):
        resolve_dtype("fp16", "cpu")
    import torch

    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
