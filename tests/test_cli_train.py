"""``annotator train``: trains on the reviewed images, saves the head where the project finds it,
and refuses a per-pair fusion with a clear message."""

import numpy as np
from PIL import Image
from skimage import data

from annotator.cli import main
from annotator.domain import ImageStatus, Keypoint, KeypointSchema, Visibility
from annotator.engine import Engine
from annotator.features.config import preset
from annotator.features.content import ContentExtractor
from annotator.io.project_file import load_project, new_project, save_project
from annotator.jobs import train as tj


def make_project(tmp_path, reviewed: int):
    root = tmp_path / "imgs"
    root.mkdir()
    img = data.chelsea()
    for i in range(4):
        Image.fromarray(np.roll(img, 8 * i, axis=1)).save(root / f"img{i}.png")
    schema = KeypointSchema("cat", ("left_eye", "right_eye", "nose"), flip_pairs=((0, 1),))
    p = new_project(root, schema)
    for i in range(reviewed):
        for k, (x, y) in enumerate([(140.0, 110.0), (220.0, 110.0), (180.0, 160.0)]):
            p.set_keypoint(f"img{i}.png", k, Keypoint(x + 8 * i, y, Visibility.VISIBLE))
        p.set_status(f"img{i}.png", ImageStatus.REVIEWED)
    path = tmp_path / "p.kpproj.json"
    save_project(p, path)
    return path


ENGINE = ["--extractor", "content", "--preset", "fast", "--fusion", "dino"]


def test_train_saves_a_head_the_project_then_finds(tmp_path, capsys):
    path = make_project(tmp_path, 2)
    cache = tmp_path / "cache"
    args = ["train", str(path), *ENGINE, "--cache-dir", str(cache), "--steps", "20"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 image(s), 2 labelled instance(s)" in out
    assert "training" in out and "saved" in out
    assert "predictions use the head from 3 reviewed images on (2 now)" in out
    saved = list((tmp_path / "cache-heads").glob("*.safetensors"))
    assert len(saved) == 1
    project = load_project(path)
    import dataclasses

    project.set_settings(dataclasses.replace(project.settings, cache_dir=str(cache)))
    engine = Engine(config=preset("fast", fusion="dino"), extractor=ContentExtractor())
    head = tj.load_project_head(project, engine)
    assert head is not None and head.meta["num_images"] == 2
    assert tj.project_head(project, engine, min_images=2) is not None
    assert tj.project_head(project, engine) is None  # 2 < the default minimum


def test_train_refuses_copca_and_an_unlabelled_project(tmp_path, capsys):
    path = make_project(tmp_path, 1)
    args = ["train", str(path), "--preset", "fast", "--fusion", "copca", "--no-cache",
            "--device", "cpu"]
    assert main(args) == 2
    assert "'copca' fusion" in capsys.readouterr().err
    empty = make_project(tmp_path / "e", 0) if (tmp_path / "e").mkdir() is None else None
    assert main(["train", str(empty), *ENGINE, "--no-cache"]) == 2
    assert "no reviewed or reference image" in capsys.readouterr().err
