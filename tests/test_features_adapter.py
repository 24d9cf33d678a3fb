"""The DIY-SC adapter loads the real CC0 checkpoint strictly and computes DESIGN.md section 9.

The checkpoint is a fixture beside the repository: <repo>/../shared/fixtures/diy-sc/ (the
workplace's shared folder; CI clones the repository beside it too).
"""

import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from annotator.features import adapter as ad
from annotator.features.config import DIY_SC_SHA256
from annotator.features.fusion import l2n
from tests.shared_fixtures import DIY_SC_CHECKPOINT, candidates

FIXTURE = DIY_SC_CHECKPOINT


@pytest.fixture(scope="module")
def ckpt() -> Path:
    if not FIXTURE.is_file():
        pytest.fail("DIY-SC fixture missing: diy-sc/0300_dino_spair_best.pth in none of "
                    f"{[str(c) for c in candidates()]} (set ANNOTATOR_SHARED_FIXTURES)")
    return FIXTURE


@pytest.fixture(scope="module")
def raw(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def test_fixture_is_the_pinned_checkpoint(ckpt, raw):
    assert ad.sha256_file(ckpt) == DIY_SC_SHA256
    assert sum(v.numel() for v in raw.values()) == 628_995


def test_strict_load_keys_and_shapes(ckpt, raw):
    model = ad.load_checkpoint_file(ckpt)
    state = model.state_dict()
    expected = {k: v for k, v in raw.items() if k not in ad.TRAINING_ONLY}
    assert set(state) == set(expected) and len(state) == 9
    for k, v in expected.items():
        assert state[k].shape == v.shape and torch.equal(state[k], v), k
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("edit", ["missing", "extra", "shape", "mixing"])
def test_checkpoints_that_do_not_fit_are_refused(raw, edit):
    bad = OrderedDict(raw)
    if edit == "missing":
        del bad["bottleneck_layers.0.0.conv2.norm.bias"]
    elif edit == "extra":
        bad["bottleneck_layers.0.0.shortcut.weight"] = torch.zeros(768, 768, 1, 1)
    elif edit == "shape":
        bad["bottleneck_layers.0.0.conv3.norm.weight"] = torch.ones(384)
    else:
        bad["mixing_weights"] = torch.ones(2)
    with pytest.raises(ad.AdapterLoadError):
        ad.build_adapter(bad, "edited")


def reference(raw, x):
    """DESIGN.md section 9 written out with functional ops."""
    p = "bottleneck_layers.0.0."

    def cn(t, i, pad):
        t = F.conv2d(t, raw[f"{p}conv{i}.weight"], None, 1, pad)
        return F.group_norm(t, 32, raw[f"{p}conv{i}.norm.weight"], raw[f"{p}conv{i}.norm.bias"],
                            eps=1e-5)

    a = F.relu(cn(x, 1, 0))
    b = F.relu(cn(a, 2, 1))
    return F.relu(cn(b, 3, 0) + x)


def test_output_matches_the_formula_and_is_non_negative_unit_after_l2(ckpt, raw):
    model = ad.load_checkpoint_file(ckpt)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 768, 60, 60, generator=g) * 2.0
    with torch.inference_mode():
        out = model(x)
        again = model(x)
    torch.testing.assert_close(out, reference(raw, x), atol=1e-4, rtol=1e-4)
    assert torch.equal(out, again)  # eval mode: no dropout
    assert out.shape == x.shape and (out >= 0).all()
    unit = l2n(out[0])
    torch.testing.assert_close(unit.norm(dim=0), torch.ones(60, 60), atol=1e-5, rtol=0)
    # GroupNorm statistics come from the whole map: a crop alone gives other values
    with torch.inference_mode():
        crop = model(x[:, :, :30, :30])
    assert not torch.allclose(crop, out[:, :, :30, :30], atol=1e-3)
    with pytest.raises(ValueError, match="768"):
        model(x[:, :16])


class NotTensors:
    """An object weights_only unpickling must refuse."""


def test_sha_mismatch_and_unsafe_files_are_refused(ckpt, tmp_path):
    corrupt = tmp_path / "c.pth"
    corrupt.write_bytes(ckpt.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ad.AdapterLoadError, match="sha256"):
        ad.load_checkpoint_file(corrupt)

    unsafe = tmp_path / "u.pth"
    torch.save({"x": NotTensors()}, unsafe)
    with pytest.raises(ad.AdapterLoadError, match="cannot read"):  # weights_only refuses it
        ad.load_checkpoint_file(unsafe, sha256=None)
    with pytest.raises(ad.AdapterLoadError, match="does not exist"):
        ad.load_checkpoint_file(tmp_path / "none.pth")


def test_download_on_first_use_is_verified_and_cached(ckpt, tmp_path):
    calls = []

    def fake_download(url, dest):
        calls.append(url)
        shutil.copyfile(ckpt, dest)

    model = ad.load_diy_adapter(None, cache_dir=tmp_path, download=fake_download)
    assert isinstance(model, ad.DiyAdapter) and calls == [ad.DIY_SC_URL]
    assert "odunkel/DIY-SC" in calls[0]
    ad.load_diy_adapter(None, cache_dir=tmp_path, download=fake_download)
    assert len(calls) == 1  # cached

    def wrong_download(url, dest):
        Path(dest).write_bytes(b"not the checkpoint")

    other = tmp_path / "other"
    with pytest.raises(ad.AdapterLoadError, match="sha256"):
        ad.load_diy_adapter(None, cache_dir=other, download=wrong_download)
    assert not any(other.iterdir())  # nothing half-written is kept

    with pytest.raises(ad.AdapterLoadError, match="offline"):
        ad.load_diy_adapter(None, cache_dir=tmp_path / "empty", offline=True)
    # a local path setting needs no download
    assert isinstance(ad.load_diy_adapter(str(ckpt), download=wrong_download), ad.DiyAdapter)


def test_download_is_capped_so_a_wrong_url_cannot_fill_the_disk(tmp_path):
    import io

    from annotator.features.adapter import copy_capped

    out = io.BytesIO()
    assert copy_capped(io.BytesIO(b"x" * 3000), out, 4096, "u") == 3000
    assert out.getvalue() == b"x" * 3000
    with pytest.raises(OSError, match="more than"):
        copy_capped(io.BytesIO(b"x" * (3 << 20)), io.BytesIO(), 2 << 20, "http://example/x")
