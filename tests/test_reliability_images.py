"""Loader reliability: a corpus of bad files (FIFOs, symlink loops, broken links, bombs,
truncated and fake images) gives one clear error naming the listed file, never a hang or a
bare exception; runs (propagate, eval coco, COCO export) go on past them."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from annotator.io.images import (
    ImageLoadError,
    list_images,
    load_image,
    load_listed,
    load_thumbnail,
    read_size,
    resolve_image_path,
)


@contextlib.contextmanager
def deadline(seconds: int = 10):
    """Fail instead of hanging (a FIFO opened for reading blocks forever)."""
    def boom(*_a):  # noqa: ANN202
        raise TimeoutError("hung")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_only_png(w: int, h: int, depth: int = 8, colour: int = 2) -> bytes:
    """A tiny PNG file announcing a w x h image (the decode would need the full size)."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))


def make_corpus(root: Path) -> dict[str, str]:
    """Bad files under ``root``: name -> words the error must contain."""
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (200, 10, 10)).save(root / "good.png")
    bad: dict[str, str] = {}
    os.mkfifo(root / "fifo.jpg")
    bad["fifo.jpg"] = "not a regular file"
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    bad["loop_a.jpg"] = "loop"
    bad["loop_b.jpg"] = "loop"
    os.symlink("missing_target.jpg", root / "dangling.jpg")
    bad["dangling.jpg"] = "broken symbolic link"
    (root / "empty.png").write_bytes(b"")
    bad["empty.png"] = "not an image"
    (root / "text.jpg").write_bytes(b"hello, not an image")
    bad["text.jpg"] = "not an image"
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[:200])
    bad["truncated.jpg"] = "truncated"
    (root / "folder.png").mkdir()
    bad["folder.png"] = "folder"
    info = PngImagePlugin.PngInfo()
    info.add_text("bomb", "a" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)
    Image.new("L", (8, 8)).save(root / "ztxt_bomb.png", pnginfo=info)
    bad["ztxt_bomb.png"] = "bomb"
    Image.new("RGB", (8, 8)).save(root / "iccp_bomb.png",
                                  icc_profile=b"\0" * (PngImagePlugin.MAX_TEXT_CHUNK + 10))
    bad["iccp_bomb.png"] = "bomb"
    (root / "pixels_bomb.png").write_bytes(header_only_png(13_000, 13_000))  # 169 Mpx, 1 GB
    bad["pixels_bomb.png"] = "MiB"
    (root / "huge.png").write_bytes(header_only_png(40_000, 40_000))
    bad["huge.png"] = "pixels"
    return bad


def test_every_bad_file_gives_a_clear_error_naming_it(tmp_path):
    root = tmp_path / "imgs"
    bad = make_corpus(root)
    with deadline():
        for name, words in bad.items():
            for fn in (load_image, read_size, load_thumbnail):
                with pytest.raises(ImageLoadError) as err:
                    fn(root / name)
                assert name in str(err.value) and words in str(err.value), (fn, str(err.value))
            with pytest.raises(ImageLoadError, match=words) as err:
                load_listed(root, name)
            assert name in str(err.value)
        assert load_image(root / "good.png").shape == (24, 32, 3)


def test_listing_skips_fifos_and_resolving_never_raises(tmp_path):
    root = tmp_path / "imgs"
    make_corpus(root)
    listed = list_images(root)
    assert "fifo.jpg" not in listed and "good.png" in listed
    assert {"loop_a.jpg", "dangling.jpg"} <= set(listed)  # reported when loaded
    for name in listed:
        resolve_image_path(root, name)  # no RuntimeError from a loop


def test_gui_loaders_refuse_links_out_of_the_root(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", root / "outside.png")
    with pytest.raises(ImageLoadError, match="outside the image root"):
        load_listed(root, "outside.png")
    with pytest.raises(ImageLoadError, match="outside the image root"):
        load_listed(root, "outside.png", 64)


def test_high_bit_depth_and_float_data_keep_their_contrast(tmp_path):
    twelve = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096)
    Image.fromarray(twelve).save(tmp_path / "twelve.png")  # 12-bit data in a 16-bit PNG
    got = load_image(tmp_path / "twelve.png")
    assert got.max() == 255 and got.min() == 0
    hdr = np.linspace(-50.0, 1000.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(hdr, mode="F").save(tmp_path / "float.tif")
    got = load_image(tmp_path / "float.tif")[..., 0]
    assert got.min() == 0 and got.max() == 255 and 100 < np.median(got) < 160
    wide = np.linspace(-70000, 70000, 64 * 64).astype(np.int32).reshape(64, 64)
    Image.fromarray(wide, mode="I").save(tmp_path / "int32.tif")
    got = load_image(tmp_path / "int32.tif")[..., 0]
    assert got.min() == 0 and got.max() == 255 and 100 < np.median(got) < 160
    unit = np.full((8, 8), 0.5, np.float32)
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    assert load_image(tmp_path / "unit.tif")[0, 0, 0] == 128


def test_propagate_cli_goes_on_past_every_bad_file(tmp_path, capsys):
    from annotator.cli import main
    from annotator.domain import Keypoint, KeypointSchema, Visibility
    from annotator.io.project_file import new_project, save_project

    root = tmp_path / "imgs"
    bad = make_corpus(root)
    rng = np.random.default_rng(0)
    for name in ("ref.png", "t1.png", "t2.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / name)
    p = new_project(root, KeypointSchema("s", ("a", "b")))
    p.set_keypoint("ref.png", 0, Keypoint(10, 10, Visibility.VISIBLE))
    p.set_keypoint("ref.png", 1, Keypoint(40, 40, Visibility.VISIBLE))
    proj = tmp_path / "p.kpproj.json"
    save_project(p, proj)
    out = tmp_path / "out.json"
    with deadline(120):
        code = main(["propagate", str(proj), "--out", str(out), "--extractor", "content",
                     "--preset", "fast", "--no-flip", "--no-soft-argmax",
                     "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 0 and out.is_file()
    for name in bad:
        if name not in ("fifo.jpg", "folder.png"):  # not listed at all
            assert name in err
    import json

    doc = json.loads(out.read_text())
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    predicted = {names[a["image_id"]] for a in doc["annotations"]}
    assert {"t1.png", "t2.png", "good.png"} <= predicted


def test_propagate_refuses_to_overwrite_its_input(tmp_path, capsys):
    from annotator.cli import main

    src = tmp_path / "in.json"
    src.write_text("{}")
    assert main(["propagate", str(src), "--out", str(src), "--extractor", "content"]) == 2
    assert "input file" in capsys.readouterr().err and src.read_text() == "{}"


def test_export_coco_goes_on_past_unreadable_images(tmp_path):
    from annotator.domain import Keypoint, KeypointSchema, Visibility
    from annotator.io.coco import CocoFormatError, export_coco
    from annotator.io.project_file import new_project

    root = tmp_path / "imgs"
    make_corpus(root)
    p = new_project(root, KeypointSchema("s", ("a",)))
    p.set_keypoint("good.png", 0, Keypoint(1, 1, Visibility.VISIBLE))
    with deadline():
        doc = export_coco(p)  # the loop no longer raises RuntimeError: bad files left out
    assert [im["file_name"] for im in doc["images"]] == ["good.png"]
    assert len(doc["annotations"]) == 1
    p.set_keypoint("loop_a.jpg", 0, Keypoint(1, 1, Visibility.VISIBLE))
    with pytest.raises(CocoFormatError, match="loop_a.jpg"):  # labels never dropped silently
        export_coco(p)


def test_eval_coco_goes_on_past_an_unreadable_image(tmp_path):
    from annotator.io.datasets import load_coco_pairs
    from annotator.jobs.evaluate import evaluate
    from tests.test_eval_datasets import make_coco

    path = make_coco(tmp_path)
    (tmp_path / "coco" / "imgs" / "3.png").unlink()
    os.mkfifo(tmp_path / "coco" / "imgs" / "3.png")

    def predictor(src, trg, kps):  # noqa: ANN001, ANN202
        return np.asarray(kps, float)

    with deadline():
        result = evaluate(load_coco_pairs(path), predictor)
    assert result.skipped and all("3.png" in s for s in result.skipped)
    assert len(result.scores) + len(result.skipped) == 8 and result.scores


def test_ctrl_c_in_propagate_writes_what_is_done(tmp_path, capsys, monkeypatch):
    import json

    import annotator.jobs.propagate as jp
    from annotator.cli import main
    from annotator.domain import Keypoint, KeypointSchema, Visibility
    from annotator.io.project_file import new_project, save_project

    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name in ("ref.png", "t1.png", "t2.png", "t3.png", "t4.png"):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / name)
    p = new_project(root, KeypointSchema("s", ("a",)))
    p.set_keypoint("ref.png", 0, Keypoint(10, 10, Visibility.VISIBLE))
    proj = tmp_path / "p.kpproj.json"
    save_project(p, proj)
    real = jp.run_propagation

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        for n, pred in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt
            yield pred

    monkeypatch.setattr(jp, "run_propagation", interrupted)
    out = tmp_path / "out.json"
    code = main(["propagate", str(proj), "--out", str(out), "--extractor", "content",
                 "--preset", "fast", "--no-flip", "--no-soft-argmax", "--no-cache"])
    assert code == 130
    assert "wrote the 2 prediction(s) made so far" in capsys.readouterr().err
    doc = json.loads(out.read_text())
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    predicted = {names[a["image_id"]] for a in doc["annotations"]} - {"ref.png"}
    assert predicted == {"t1.png", "t2.png"}
