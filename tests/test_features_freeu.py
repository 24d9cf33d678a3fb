"""FreeU as GeoAware-SC's feature code applies it, against a plain reference computation.

The reference runs the tiny SD 1.5-shaped UNet block by block (the way GeoAware's decoder loop
does: before every decoder resnet, h with C_hi channels gets h[:, :C_hi/2] *= 1.2 in place and
the skip's central 2 x 2 spectrum box x 0.9; h with C_hi/2 channels x 1.4 and x 0.2; features are
recorded as the h tensors that the next step scales in place) with a numpy FFT filter. The product
runs diffusers' own forward with forward pre-hooks. They must agree on s5, s4 and s3.
"""

import numpy as np
import pytest
import torch

from annotator.features.config import ModelSource
from annotator.features.models import load_sd
from annotator.features.sd_dino import FreeU, _decoder_inputs, fourier_filter, unet_features


@pytest.fixture(scope="module")
def unet(tiny_model_dirs):
    sd = load_sd(ModelSource(sd_model=str(tiny_model_dirs[0])), "cpu", torch.float32)
    return sd.unet


def np_fourier(x: np.ndarray, threshold: int, scale: float) -> np.ndarray:
    f = np.fft.fftshift(np.fft.fftn(x, axes=(-2, -1)), axes=(-2, -1))
    h, w = x.shape[-2:]
    mask = np.ones((h, w))
    mask[h // 2 - threshold:h // 2 + threshold, w // 2 - threshold:w // 2 + threshold] = scale
    return np.fft.ifftn(np.fft.ifftshift(f * mask, axes=(-2, -1)), axes=(-2, -1)).real


def test_fourier_filter_matches_numpy_and_scales_the_mean():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    got = fourier_filter(x, 1, 0.2)
    np.testing.assert_allclose(got.numpy(), np_fourier(x.numpy().astype(np.float64), 1, 0.2),
                               atol=1e-5)
    const = torch.full((1, 1, 4, 4), 3.0)  # only the DC term, which is inside the box
    torch.testing.assert_close(fourier_filter(const, 1, 0.5), torch.full((1, 1, 4, 4), 1.5))
    torch.testing.assert_close(fourier_filter(x, 1, 1.0), x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="B, C, H, W"):
        fourier_filter(x[0], 1, 0.5)


def reference_features(unet, x, t, ehs):
    """GeoAware-style decoder loop with in-place FreeU (plain code, numpy FFT)."""
    hi = unet.config.block_out_channels[-1]
    tt = torch.full((x.shape[0],), t, dtype=torch.long)
    emb = unet.time_embedding(unet.time_proj(tt).to(x.dtype))
    h = unet.conv_in(x)
    skips = [h]
    for down in unet.down_blocks:
        if getattr(down, "has_cross_attention", False):
            h, res = down(hidden_states=h, temb=emb, encoder_hidden_states=ehs)
        else:
            h, res = down(hidden_states=h, temb=emb)
        skips.extend(res)
    h = unet.mid_block(h, emb, encoder_hidden_states=ehs)
    feats = {}
    names = {(0, 1): "s5", (1, 1): "s4", (2, 1): "s3"}
    for i, up in enumerate(unet.up_blocks):
        for j, resnet in enumerate(up.resnets):
            skip = skips.pop()
            if h.shape[1] == hi:
                h[:, :hi // 2] = h[:, :hi // 2] * 1.2  # in place, like GeoAware
                skip = torch.from_numpy(np_fourier(skip.double().numpy(), 1, 0.9)).float()
            elif h.shape[1] == hi // 2:
                h[:, :hi // 4] = h[:, :hi // 4] * 1.4
                skip = torch.from_numpy(np_fourier(skip.double().numpy(), 1, 0.2)).float()
            h = resnet(torch.cat([h, skip], dim=1), emb)
            if getattr(up, "attentions", None):
                h = up.attentions[j](h, encoder_hidden_states=ehs).sample
            if (i, j) in names:
                feats[names[(i, j)]] = h  # scaled in place by the next step
        if up.upsamplers is not None:
            h = up.upsamplers[0](h)
    return feats


@torch.inference_mode()
def test_freeu_hooks_equal_plain_reference(unet):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=g)
    ehs = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    freeu = FreeU.for_unet(unet)
    # the tiny UNet exercises both rules: h of C_hi and of C_hi / 2 channels
    seen = {c for _, c in _decoder_inputs(unet)}
    assert {freeu.channels, freeu.channels // 2} <= seen
    got = unet_features(unet, x, 50, ehs, stop_early=True, freeu=freeu)
    ref = reference_features(unet, x.clone(), 50, ehs)
    plain = unet_features(unet, x, 50, ehs, stop_early=True)
    for k in ("s5", "s4", "s3"):
        torch.testing.assert_close(got[k], ref[k], atol=2e-5, rtol=1e-4)
        assert not torch.allclose(got[k], plain[k], atol=1e-3)  # FreeU did change the maps
    # the hooks are gone afterwards: a plain run equals the plain run
    again = unet_features(unet, x, 50, ehs, stop_early=True)
    for k in ("s5", "s4", "s3"):
        torch.testing.assert_close(again[k], plain[k])


@torch.inference_mode()
def test_freeu_differs_from_diffusers_own_placement(unet):
    """Diffusers' FreeU keys the factors by block index (b1 only on up block 0, b2 on 1), not
    by channel count: s4 of up block 1 would be scaled by 1.4 there, by 1.2 in GeoAware."""
    freeu = FreeU.for_unet(unet)
    assert freeu.factors(freeu.channels) == (1.2, 0.9)
    assert freeu.factors(freeu.channels // 2) == (1.4, 0.2)
    assert freeu.factors(freeu.channels // 4) is None
    h = torch.ones(1, freeu.channels, 2, 2)
    out = freeu.backbone(h)
    assert out[:, :freeu.channels // 2].eq(1.2).all() and out[:, freeu.channels // 2:].eq(1).all()
    assert h.eq(1).all()  # a copy, the input is unchanged
