"""``--ray``: extraction and propagation on a local Ray (2 CPUs) with the tiny models.

One Ray for the module (starting one costs seconds); every test starts its own actors, as a
real run does. Marked ``ray``: ``-m "not ray and not longrun"`` leaves them out."""

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from annotator.cli import build_parser, main
from annotator.cli.common import engine_from_args
from annotator.domain import Keypoint, KeypointSchema, Visibility
from annotator.io.project_file import new_project, save_project
from annotator.jobs.cluster import ClusterOptions, run_extract, run_propagate
from annotator.jobs.propagate import PropagateRequest
from tests.tiny_models import TINY, TINY_FAST

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
POINTS = [(40.0, 30.0), (100.0, 50.0), (60.0, 110.0)]
ODD = (90, 100, 3)  # shape of the image the injected faults react to


@pytest.fixture(scope="module")
def ray_local():
    import ray  # the [cluster] extra (the README's test command installs it)

    old = os.environ.get("PYTHONPATH")
    # workers import annotator and this test module from the checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), old) if p)
    try:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    yield ray
    ray.shutdown()


@pytest.fixture
def folder(tmp_path):
    """Five views of a photo, one odd-sized image and an unreadable file."""
    root = tmp_path / "imgs"
    root.mkdir()
    img = np.ascontiguousarray(data.astronaut()[::4, ::4])  # 128 x 128
    for i in range(5):
        Image.fromarray(np.roll(img, (4 * i, 6 * i), axis=(0, 1))).save(root / f"im{i}.png")
    Image.fromarray(np.ascontiguousarray(img[:ODD[0], :ODD[1]])).save(root / "odd.png")
    (root / "zz_broken.jpg").write_bytes(b"not an image")
    return root


def project_file(folder, tmp_path) -> Path:
    p = new_project(folder, KeypointSchema("thing", ("a", "b", "c")))
    for k, (x, y) in enumerate(POINTS):
        p.set_keypoint("im0.png", k, Keypoint(x, y, Visibility.VISIBLE))
    path = tmp_path / "p.kpproj.json"
    save_project(p, path)
    return path


def model_args(tiny_model_dirs, tmp_path, config=TINY_FAST) -> list[str]:
    sd_dir, dino_dir = tiny_model_dirs
    fields = {k: getattr(config, k) for k in ("sd_size", "sd_tile", "sd_tile_offsets",
                                              "dino_size", "grid", "pca_dim", "dino_layer")}
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**fields, "preset": config.preset}))
    return ["--sd-model", str(sd_dir), "--dino-model", str(dino_dir), "--feature-config",
            str(cfg), "--device", "cpu", "--no-flip"]


RAY = ["--ray", "local", "--actors", "2", "--ray-batch-size", "2"]


def test_extract_on_ray_then_propagate_reads_only_cache_hits(
        ray_local, tmp_path, folder, tiny_model_dirs, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    models = model_args(tiny_model_dirs, tmp_path)
    assert main(["extract", str(folder), *cache, *models, *RAY]) == 0
    out = capsys.readouterr()
    assert "6 computed, 0 already cached, 1 failed" in out.out
    assert "zz_broken.jpg" in out.err and "not an image" in out.err
    assert main(["propagate", str(project_file(folder, tmp_path)), "--out",
                 str(tmp_path / "o.json"), *cache, *models]) == 0
    out = capsys.readouterr().out
    # the reference and the 5 readable targets come from what the actors wrote; only the
    # crops around the boxes found from the reference are new (extract cannot know them)
    assert "(6 from disk" in out


def test_propagate_on_ray_writes_the_same_coco_as_the_local_run(
        ray_local, tmp_path, folder, tiny_model_dirs, capsys):
    proj = project_file(folder, tmp_path)
    models = model_args(tiny_model_dirs, tmp_path, TINY)
    local, remote = tmp_path / "local.json", tmp_path / "ray.json"
    assert main(["propagate", str(proj), "--out", str(local), "--cache-dir",
                 str(tmp_path / "c1"), *models]) == 0
    assert main(["propagate", str(proj), "--out", str(remote), "--cache-dir",
                 str(tmp_path / "c2"), *models, *RAY]) == 0
    a, b = json.loads(local.read_text()), json.loads(remote.read_text())
    assert a["images"] == b["images"] and a["categories"] == b["categories"]
    assert len(a["annotations"]) == len(b["annotations"]) == 6  # reference + 5 predicted
    for x, y in zip(a["annotations"], b["annotations"]):
        assert x["image_id"] == y["image_id"]
        np.testing.assert_allclose(x["keypoints"], y["keypoints"], atol=1e-4)
        sa, sb = ([np.nan if v is None else v for v in s["keypoint_scores"]] for s in (x, y))
        np.testing.assert_allclose(sa, sb, atol=1e-5)  # None (the reference's) as NaN
    assert sum(x["keypoint_origins"] == ["predicted"] * 3 for x in b["annotations"]) == 5
    assert len(list((tmp_path / "c2").rglob("*.safetensors"))) == 12  # ref + 5, 6 found-box crops


def faulty_engine(args, marker: str | None = None):
    """Tiny engine whose extractor fails on ODD-shaped images: raises, or (``marker``) kills
    its process the first time (the marker file records that it happened)."""
    engine = engine_from_args(args)
    extractor = engine.extractor
    real = extractor.extract

    def extract(images):
        if any(im.shape == ODD for im in images):
            if marker is None:
                raise RuntimeError("injected failure")
            if not os.path.exists(marker):
                Path(marker).write_text(str(os.getpid()))
                os._exit(1)  # the actor dies mid-batch
        return real(images)

    extractor.extract = extract
    return engine


def setup(folder, tmp_path, tiny_model_dirs, marker=None):
    args = build_parser().parse_args(["extract", str(folder), "--cache-dir",
                                      str(tmp_path / "cache"),
                                      *model_args(tiny_model_dirs, tmp_path)])
    del args.func
    p = new_project(folder, KeypointSchema("thing", ("a", "b", "c")))
    for k, (x, y) in enumerate(POINTS):
        p.set_keypoint("im0.png", k, Keypoint(x, y, Visibility.VISIBLE))
    return functools.partial(faulty_engine, args, marker), PropagateRequest.from_project(p)


def test_injected_failure_gives_one_error_entry_and_every_other_prediction(
        ray_local, tmp_path, folder, tiny_model_dirs):
    factory, request = setup(folder, tmp_path, tiny_model_dirs)
    assert set(request.targets) == {"im1.png", "im2.png", "im3.png", "im4.png", "odd.png",
                                    "zz_broken.jpg"}
    preds = list(run_propagate(request, factory, ClusterOptions(actors=2, batch_size=2)))
    assert sorted(p.path for p in preds) == sorted(request.targets)
    errors = {p.path: p.error for p in preds if p.error}
    assert set(errors) == {"odd.png", "zz_broken.jpg"}
    assert "injected failure" in errors["odd.png"] and "not an image" in errors["zz_broken.jpg"]
    for p in preds:
        if p.error is None:
            assert p.points.shape == (3, 2) and np.isfinite(p.confidence).all()
    # a later run on the same cache reuses the entries the actors wrote (im1, im2)
    outcomes = list(run_extract(["im1.png", "odd.png", "im2.png"], str(folder), factory,
                                ClusterOptions(actors=1, batch_size=3)))
    status = {o.path: (o.status, o.error) for o in outcomes}
    assert status == {"im1.png": ("cached", None), "im2.png": ("cached", None),
                      "odd.png": ("error", "RuntimeError: injected failure")}


def test_a_killed_actor_is_restarted_and_the_run_completes(
        ray_local, tmp_path, folder, tiny_model_dirs):
    marker = tmp_path / "killed"
    factory, request = setup(folder, tmp_path, tiny_model_dirs, str(marker))
    preds = list(run_propagate(request, factory, ClusterOptions(actors=2, batch_size=2)))
    assert marker.exists()  # an actor did die mid-run
    assert sorted(p.path for p in preds) == sorted(request.targets)
    assert {p.path for p in preds if p.error} == {"zz_broken.jpg"}  # odd.png retried and done


def test_eval_on_ray_scores_the_same_pairs_as_the_local_run(
        ray_local, tmp_path, tiny_model_dirs):
    from tests.test_eval_datasets import make_pfpascal

    root = make_pfpascal(tmp_path)
    base = ["eval", "pfpascal", "--root", str(root), *model_args(tiny_model_dirs, tmp_path),
            "--no-cache", "--limit", "3"]
    assert main([*base, "--out", str(tmp_path / "local")]) == 0
    assert main([*base, "--out", str(tmp_path / "ray"), *RAY]) == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text())["runs"]["ours"]
            for d in ("local", "ray"))
    assert b["settings"]["ray"] == "local" and b["settings"]["actors"] == 2
    assert len(a["pairs"]) == len(b["pairs"]) == 3
    for x, y in zip(a["pairs"], b["pairs"]):
        assert x["pair_id"] == y["pair_id"] and x["correct"] == y["correct"]
        # float tolerance: actors run torch on one thread, the driver on several
        np.testing.assert_allclose(x["mean_error_px"], y["mean_error_px"], rtol=1e-5)
    assert a["overall"] == b["overall"] and a["curve"] == b["curve"]
