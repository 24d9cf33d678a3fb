"""copca on one run basis (annotator.features.copca_basis)."""

import numpy as np
import pytest
import torch

from annotator.engine import Engine
from annotator.features import fusion
from annotator.features.copca_basis import CopcaBasis, RunBasisExtractor, fit_copca_basis
from annotator.features.extractor import pair_dependent
from tests.test_matching_parts import RandomMaps, _images, _layers

SIZES = {"s3": 24, "s4": 12, "s5": 6, "dino": 24}
CH = {"s3": 40, "s4": 48, "s5": 48, "dino": 16}  # s5: fewer tokens than channels


def _sims(a, b):
    return a.flatten(1).T @ b.flatten(1)


@pytest.mark.parametrize("dim", [8, 30])
def test_basis_fitted_on_the_pair_is_copca_pair(dim):
    a, b = _layers(1, SIZES, CH), _layers(2, SIZES, CH)
    pa, pb = fusion.copca_pair(a, b, 24, dim)
    basis = fit_copca_basis([a, b], dim)
    ra, rb = basis.describe(a, 24), basis.describe(b, 24)
    assert ra.shape == pa.shape and rb.shape == pb.shape
    # components agree up to sign, so every cosine similarity is the pair's own
    torch.testing.assert_close(_sims(ra, rb), _sims(pa, pb), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(_sims(ra, ra), _sims(pa, pa), atol=2e-4, rtol=1e-4)


def test_basis_shapes_null_directions_and_errors():
    a, b = _layers(1, SIZES, CH), _layers(2, SIZES, CH)
    basis = fit_copca_basis([a], 64)
    # s5 of one image: 36 tokens span at most 35 directions; the rest are zero columns
    nonzero = (basis.bases["s5"].abs().sum(0) > 0).sum().item()
    assert nonzero <= 35
    assert basis.bases["s4"].shape == (48, 48) and basis.bases["s3"].shape == (40, 40)
    out = basis.describe(b, 24)
    assert torch.isfinite(out).all()
    norms = out[: 40 + 48 + 48].norm(dim=0)  # the SD part is L2-normalised per cell
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="at least one"):
        fit_copca_basis([], 8)
    with pytest.raises(ValueError, match="pca_dim"):
        fit_copca_basis([a], 0)
    with pytest.raises(ValueError, match="differ"):
        fit_copca_basis([a, {**b, "s4": b["s4"][:10]}], 8)
    with pytest.raises(ValueError, match="channels"):
        basis.describe({**b, "s3": b["s3"][:5]}, 24)
    no_dino = CopcaBasis(basis.means, basis.bases, use_dino=False)
    assert no_dino.describe(b, 24).shape[0] == 40 + 48 + 48


def test_run_basis_extractor_in_the_engine():
    inner = RandomMaps("copca")
    assert pair_dependent(inner)
    ref, *targets = _images(5)
    maps = inner.extract([ref, *targets[:2]])
    basis = fit_copca_basis([m.layers for m in maps], 16)
    ext = RunBasisExtractor(inner, basis)
    assert not pair_dependent(ext) and ext.fingerprint == inner.fingerprint
    eng = Engine(config=inner.config, extractor=ext)  # type: ignore[arg-type]
    pts = np.random.default_rng(0).random((7, 2)) * [63, 47]
    res = eng.transfer_many([(ref, pts, None)], targets)
    assert len(res) == len(targets) and all(len(r) == 7 for r in res)
    # the same descriptors as describing by hand and matching
    from annotator.matching.transfer import transfer

    tm = inner.extract([targets[0]])[0]
    want = transfer(basis.describe(maps[0].layers, maps[0].grid), basis.describe(tm.layers,
                    tm.grid), pts, maps[0].letterbox, tm.letterbox, eng.match_params)
    np.testing.assert_array_equal(res[0].points, want.points)
