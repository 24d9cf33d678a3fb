import numpy as np
import pytest
from PIL import Image

from annotator.io import gil_steps
from annotator.io.images import (
    ImageLoadError,
    list_images,
    load_image,
    load_thumbnail,
    read_size,
    resolve_image_path,
)


def gradient(w: int = 40, h: int = 30) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    return img


def test_exif_rotated_jpeg_is_shown_upright(tmp_path):
    # stored landscape 40x30 with a red block top-left; orientation 6 = rotate 90 CW to view
    stored = np.zeros((30, 40, 3), np.uint8)
    stored[:10, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    img = load_image(path)
    assert img.shape == (40, 30, 3)  # portrait after applying orientation
    assert read_size(path) == (30, 40)
    # rotating 90 CW puts the top-left block at the top-right
    assert img[:8, -8:, 0].mean() > 200 and img[:8, :8, 0].mean() < 60


@pytest.mark.parametrize(
    "mode", ["L", "RGB", "RGBA", "P", "I;16", "LA", "1"]
)
def test_modes_become_rgb_uint8(tmp_path, mode):
    base = Image.fromarray(gradient())
    if mode == "I;16":
        arr = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
        im = Image.fromarray(arr)
    else:
        im = base.convert(mode)
    path = tmp_path / "x.png"
    im.save(path)
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3)
    if mode == "I;16":  # 16-bit scaled, not clipped: bright bottom-right, dark top-left
        assert out[0, 0, 0] < 5 and out[-1, -1, 0] > 250
    if mode == "RGB":
        assert np.array_equal(out, gradient())


def test_rgba_transparent_is_white(tmp_path):
    arr = np.zeros((10, 10, 4), np.uint8)
    path = tmp_path / "t.png"
    Image.fromarray(arr, "RGBA").save(path)
    assert (load_image(path) == 255).all()


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageLoadError, match="text.jpg: not an image"):
        load_image(tmp_path / "text.jpg")
    good = tmp_path / "good.jpg"
    Image.fromarray(gradient(200, 200)).save(good)
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageLoadError, match="trunc.jpg"):
        load_image(tmp_path / "trunc.jpg")
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="decompression-bomb"):
        load_image(good, max_pixels=100)
    # one bad file does not stop the others
    ok = []
    for name in ("text.jpg", "good.jpg", "trunc.jpg"):
        try:
            ok.append(load_image(tmp_path / name).shape)
        except ImageLoadError:
            pass
    assert ok == [(200, 200, 3)]


def test_thumbnail_and_listing(tmp_path):
    Image.fromarray(gradient(400, 100)).save(tmp_path / "wide.jpg")
    (tmp_path / "sub").mkdir()
    Image.fromarray(gradient()).save(tmp_path / "sub" / "b.PNG")
    (tmp_path / "notes.txt").write_text("x")
    thumb = load_thumbnail(tmp_path / "wide.jpg", 100)
    assert max(thumb.shape[:2]) <= 100 and thumb.shape[1] == 100
    assert list_images(tmp_path) == ["sub/b.PNG", "wide.jpg"]
    with pytest.raises(ValueError):
        resolve_image_path(tmp_path, "../x.jpg")
    assert resolve_image_path(tmp_path, "sub/b.PNG") == (tmp_path / "sub" / "b.PNG").resolve()


def test_listing_longer_than_a_sorting_run_is_sorted(tmp_path, monkeypatch):
    monkeypatch.setattr(gil_steps, "SORT_RUN", 2)  # 9 files: five runs, merged
    names = ["z.jpg", "a.png", "é.jpg", "b/c.jpg", "b/a.jpg", "A.jpg", "10.jpg", "9.jpg",
             "b/é/x.jpg"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gradient()).save(tmp_path / name)
    assert list_images(tmp_path) == sorted(names)
