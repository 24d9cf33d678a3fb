"""Batch functions shared by the single-process and the Ray runs: statuses, cache reuse and
isolation of a failing image."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from annotator.domain import Keypoint, KeypointSchema, Visibility
from annotator.engine import Engine
from annotator.features.cache import FeatureCache
from annotator.features.config import preset
from annotator.features.content import ContentExtractor
from annotator.io.project_file import new_project
from annotator.jobs.batch import (
    CACHED,
    COMPUTED,
    FAILED,
    PreloadedLoader,
    batches,
    extract_batch,
    load_references,
    propagate_batch,
)
from annotator.jobs.progress import TaskState
from annotator.jobs.propagate import PropagateRequest, run_propagation

POINTS = [(60.0, 50.0), (150.0, 80.0), (100.0, 150.0)]
BAD_SHAPE = (100, 90, 3)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    img = data.astronaut()[::2, ::2]  # 256 x 256
    for i in range(4):
        Image.fromarray(np.roll(img, 8 * i, axis=1)).save(root / f"im{i}.png")
    Image.fromarray(img[:100, :90]).save(root / "odd.png")  # the shape the faulty extractor hates
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


class FaultyContent(ContentExtractor):
    """Content descriptor failing on images of BAD_SHAPE; counts the images it extracts."""

    def __init__(self) -> None:
        super().__init__()
        self.extracted = 0

    def extract(self, images):
        if any(im.shape == BAD_SHAPE for im in images):
            raise RuntimeError("injected failure")
        self.extracted += len(images)
        return super().extract(images)


def make_engine(tmp_path, extractor=None) -> Engine:
    return Engine(config=preset("fast", softargmax_window=0),
                  cache=FeatureCache(tmp_path / "cache"), extractor=extractor or FaultyContent())


def request(folder, targets) -> PropagateRequest:
    schema = KeypointSchema("thing", ("a", "b", "c"))
    p = new_project(folder, schema)
    for k, (x, y) in enumerate(POINTS):
        p.set_keypoint("im0.png", k, Keypoint(x, y, Visibility.VISIBLE))
    return PropagateRequest.from_project(p, targets)


def test_extract_batch_statuses_and_cache_reuse(tmp_path, folder):
    eng = make_engine(tmp_path)
    paths = ["im0.png", "broken.jpg", "odd.png", "im1.png", "../escape.png"]
    out = extract_batch(paths, str(folder), eng)
    assert [o.path for o in out] == paths  # one outcome per path, in order
    assert [o.status for o in out] == [COMPUTED, FAILED, FAILED, COMPUTED, FAILED]
    assert "not an image" in out[1].error
    assert out[2].error == "RuntimeError: injected failure"
    assert "escapes the image root" in out[4].error
    assert eng.extractor.extracted == 2
    # a fresh engine on the same cache folder (a restarted run): nothing is recomputed
    again = make_engine(tmp_path)
    out = extract_batch(["im0.png", "im1.png", "im2.png"], str(folder), again)
    assert [o.status for o in out] == [CACHED, CACHED, COMPUTED]
    assert again.extractor.extracted == 1


def test_extract_batch_needs_a_cache(tmp_path, folder):
    eng = Engine(config=preset("fast"), cache=None, extractor=ContentExtractor())
    with pytest.raises(ValueError, match="feature cache"):
        extract_batch(["im0.png"], str(folder), eng)


def test_propagate_batch_isolates_the_failing_target(tmp_path, folder):
    targets = ("im1.png", "odd.png", "broken.jpg", "im2.png")
    req = request(folder, targets)
    out = propagate_batch(req, list(targets), make_engine(tmp_path))
    assert [p.path for p in out] == list(targets)
    errors = {p.path: p.error for p in out if p.error}
    assert set(errors) == {"odd.png", "broken.jpg"}
    assert "injected failure" in errors["odd.png"]
    # the others equal a plain single-process run on a healthy extractor
    plain = {p.path: p for p in run_propagation(
        request(folder, ("im1.png", "im2.png")), make_engine(tmp_path / "b", ContentExtractor()),
        TaskState())}
    for p in out:
        if p.error is None:
            np.testing.assert_allclose(p.points, plain[p.path].points, atol=1e-6)
            np.testing.assert_allclose(p.confidence, plain[p.path].confidence, atol=1e-6)
            assert p.size == (256, 256)


def test_references_are_preloaded_once(tmp_path, folder):
    req = request(folder, ("im1.png",))
    calls = []

    def counting(path):
        calls.append(path.name)
        return np.asarray(Image.open(path).convert("RGB"))

    refs = load_references(req, counting)
    loader = PreloadedLoader(refs, counting)
    for _ in range(3):
        propagate_batch(req, ["im1.png"], make_engine(tmp_path), loader)
    assert calls.count("im0.png") == 1 and calls.count("im1.png") == 3


def test_load_references_none_readable(tmp_path, folder):
    (folder / "im0.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match="none of the reference images"):
        load_references(request(folder, ("im1.png",)))


def test_batches():
    assert list(batches(["a", "b", "c"], 2)) == [["a", "b"], ["c"]]
    assert list(batches([], 3)) == []
    with pytest.raises(ValueError):
        list(batches(["a"], 0))
