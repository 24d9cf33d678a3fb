import sys

import numpy as np
import pytest

from annotator.engine import Engine, flip_permutation
from annotator.features.cache import FeatureCache
from tests.tiny_models import TINY, build_tiny_models


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


def _img(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_engine_import_is_light():
    import subprocess

    code = "import sys, annotator.engine, annotator.features.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_engine_end_to_end_with_cache(tiny_dirs, tmp_path):
    cache = FeatureCache(tmp_path / "feat")
    eng = Engine.from_pretrained(sd_model=str(tiny_dirs[0]), dino_model=str(tiny_dirs[1]),
                                 preset=TINY, device="cpu", dtype="fp32", feature_cache=cache)
    assert not eng.loaded
    ref, tgt = _img(90, 140, 0), _img(120, 100, 1)
    pts = np.array([[10.0, 20.0], [100.0, 60.0], [70.0, 45.0]])
    r = eng.transfer(ref, pts, tgt, flip_pairs=[(0, 1)])
    assert eng.loaded and r.points.shape == (3, 2) and r.confidence.shape == (3,)
    assert ((r.confidence >= 0) & (r.confidence <= 1)).all()
    f = r.found
    assert ((r.points[f] >= 0).all() and (r.points[f, 0] <= 99).all()
            and (r.points[f, 1] <= 119).all())
    m = eng.features(ref)
    assert m.layers["s3"].shape[-1] == 12 and m.layers["dino"].shape[-1] == 12
    # second engine: everything from disk, same result, no model load needed for features
    eng2 = Engine.from_pretrained(sd_model=str(tiny_dirs[0]), dino_model=str(tiny_dirs[1]),
                                  preset=TINY, device="cpu", dtype="fp32",
                                  feature_cache=FeatureCache(tmp_path / "feat"))
    m2 = eng2.features(ref)
    assert not eng2.loaded and eng2.cache_stats().disk_hits == 1
    for k in m.layers:
        assert (m.layers[k] == m2.layers[k]).all()
    eng.release()
    assert not eng.loaded
    res = eng2.transfer_many([(ref, pts, None), (tgt, pts, np.array([True, False, True]))],
                             [tgt, ref])
    assert len(res) == 2 and res[0].reference is not None
    h = eng2.similarity_heatmap(ref, pts[0], tgt)
    assert h.shape == (12, 12)


def test_flip_permutation():
    np.testing.assert_array_equal(flip_permutation(4, [(0, 1), (2, 3)]), [1, 0, 3, 2])
    with pytest.raises(ValueError):
        flip_permutation(2, [(0, 5)])
