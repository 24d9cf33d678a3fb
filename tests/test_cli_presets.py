"""Every preset end to end through ``annotator propagate`` on tiny models with the real layouts
(the diy preset with the real DIY-SC checkpoint on a 768-wide tiny DINOv2), plus the CleanDIFT
UNet option. One feature cache for all runs: each setting must compute its own features."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from skimage import data

from annotator.cli import main
from annotator.domain import Keypoint, Visibility
from annotator.io.project_file import save_project
from tests.shared_fixtures import DIY_SC_CHECKPOINT
from tests.test_cli_propagate import POINTS, labelled_project
from tests.tiny_models import TINY, TINY_FAST, build_tiny_dino768

FIXTURE = DIY_SC_CHECKPOINT
SIZES = ("sd_size", "sd_tile", "sd_tile_offsets", "dino_size", "grid", "pca_dim", "dino_layer")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    imgs = root / "imgs"
    imgs.mkdir()
    img = data.astronaut()[::2, ::2]  # 256 x 256
    Image.fromarray(np.ascontiguousarray(img)).save(imgs / "ref.png")
    mirror = np.zeros_like(img)
    mirror[:, 8:] = img[:, ::-1][:, :-8]  # mirrored, not pixel-equal to the flipped reference
    Image.fromarray(mirror).save(imgs / "mirror.png")
    shifted = np.zeros_like(img)
    shifted[16:, 24:] = img[:-16, :-24]
    Image.fromarray(shifted).save(imgs / "shifted.png")
    project = labelled_project(imgs)
    for i, (x, y) in enumerate(POINTS):  # the fixture's points are for a 512 image
        project.set_keypoint("ref.png", i, Keypoint(x / 2, y / 2, Visibility.VISIBLE))
    proj = root / "p.kpproj.json"
    save_project(project, proj)
    return root, proj


def _config(path: Path, base, **extra) -> Path:
    path.write_text(json.dumps({**{k: getattr(base, k) for k in SIZES}, **extra}))
    return path


def _run(args, capsys):
    rc = main(["propagate", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _computed(text: str) -> int:
    return int(re.search(r"(\d+) computed", text).group(1))


def _check_predictions(out_file: Path) -> None:
    coco = COCO(str(out_file))
    preds = [a for a in coco.loadAnns(coco.getAnnIds()) if "predicted" in a["keypoint_origins"]]
    assert len(preds) == 2  # mirror.png and shifted.png
    for a in preds:
        assert len(a["keypoint_scores"]) == 4
        assert all(s is not None and 0 <= s <= 1 for s in a["keypoint_scores"])


def test_every_preset_runs_through_propagate(scene, tiny_model_dirs, tmp_path, capsys):
    if not FIXTURE.is_file():
        pytest.fail(f"DIY-SC fixture missing: expected {FIXTURE}")
    root, proj = scene
    sd_dir, dino_dir = tiny_model_dirs
    cache = tmp_path / "cache"
    common = ["--device", "cpu", "--cache-dir", str(cache)]
    tiny = _config(tmp_path / "tiny.json", TINY)
    tiny_fast = _config(tmp_path / "tiny_fast.json", TINY_FAST)
    sd_args = ["--sd-model", str(sd_dir), "--dino-model", str(dino_dir)]
    seen = 0
    for name, cfg in (("paper", tiny), ("fast", tiny_fast), ("geoaware", tiny)):
        out = tmp_path / f"{name}.json"
        rc, printed, err = _run([str(proj), "--out", str(out), "--preset", name, "--feature-config",
                                 str(cfg), *sd_args, *common], capsys)
        assert rc == 0, err
        _check_predictions(out)
        # the reference and two targets, and the crops around the boxes found in each (the
        # default rules: found boxes, prototypes), all new for each preset (their cache keys
        # differ)
        assert _computed(printed) == 6, printed
        seen += 6

    # geoaware with a CleanDIFT-style UNet state dict (here the tiny UNet's own weights, a
    # full safetensors state dict): clean latents at t = 261, new cache keys
    unet_file = sd_dir / "unet" / "diffusion_pytorch_model.safetensors"
    out = tmp_path / "clean.json"
    rc, printed, err = _run([str(proj), "--out", str(out), "--preset", "geoaware", "--sd-unet",
                             str(unet_file), "--feature-config", str(tiny), *sd_args, *common],
                            capsys)
    assert rc == 0, err
    _check_predictions(out)
    assert _computed(printed) == 6

    # diy: DINOv2 only (no SD model needed), the real adapter checkpoint, no flip by default
    dino768 = build_tiny_dino768(tmp_path)
    diy_cfg = _config(tmp_path / "diy.json", TINY, dino_layer=2)
    out = tmp_path / "diy.json.out"
    diy_args = [str(proj), "--out", str(out), "--preset", "diy", "--feature-config", str(diy_cfg),
                "--sd-model", str(tmp_path / "no-such-sd"), "--dino-model", str(dino768),
                *common]
    rc, printed, err = _run([*diy_args, "--diy-checkpoint", str(FIXTURE)], capsys)
    assert rc == 0, err
    _check_predictions(out)
    assert _computed(printed) == 6  # as above: no mirrored reference with prototypes
    # offline, without a local checkpoint and none downloaded before: a clear error
    rc, printed, err = _run(diy_args, capsys)
    assert rc == 2 and "DIY-SC" in err and "offline" in err


def test_sd_unet_that_does_not_fit_is_a_clear_error(scene, tiny_model_dirs, tmp_path, capsys):
    root, proj = scene
    sd_dir, dino_dir = tiny_model_dirs
    wrong = sd_dir / "vae" / "diffusion_pytorch_model.safetensors"
    rc, _, err = _run([str(proj), "--out", str(tmp_path / "o.json"), "--preset", "geoaware",
                       "--sd-unet", str(wrong), "--feature-config",
                       str(_config(tmp_path / "t.json", TINY)), "--sd-model", str(sd_dir),
                       "--dino-model", str(dino_dir), "--device", "cpu", "--no-cache"], capsys)
    assert rc == 2 and "do not fit the SD 1.5 UNet" in err
    rc, _, err = _run([str(proj), "--out", str(tmp_path / "o.json"), "--preset", "geoaware",
                       "--sd-unet", str(tmp_path / "missing.safetensors"), "--feature-config",
                       str(_config(tmp_path / "t.json", TINY)), "--sd-model", str(sd_dir),
                       "--dino-model", str(dino_dir), "--device", "cpu", "--no-cache"], capsys)
    assert rc == 2 and "does not exist" in err
