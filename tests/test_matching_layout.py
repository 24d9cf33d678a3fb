"""The box-normalised prior's frame and the layout rule of the prototype transfer (issue 19).
Synthetic crops and descriptors: exact answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotator import references
from annotator.features.crop import CropRect, ImageCrop
from annotator.matching import prototype as proto
from annotator.matching.transfer import cell_centres


def _onehot(g: int, cells: dict[tuple[int, int], float]) -> torch.Tensor:
    d = torch.zeros(2, g, g)
    d[0] = 1.0
    for (col, row), v in cells.items():
        d[0, row, col] = np.sqrt(1 - v * v)
        d[1, row, col] = v
    return d


def test_keep_layout_keeps_the_box_place_unless_the_features_are_clearly_better():
    g, cell = 10, 10.0
    p = proto.Prototypes(torch.tensor([[0.0, 1.0]]), np.array([1]),
                         np.array([[0.2, 0.2]]), np.zeros((1, 2)))
    layout = np.array([[21.0, 23.0]])  # inside cell (2, 2)
    far = cell_centres(np.array([[8, 8]]), cell)
    for elsewhere, stays in ((0.75, True), (0.95, False)):
        d = _onehot(g, {(2, 2): 0.7, (8, 8): elsewhere})
        m = proto.match_prototypes(p, d, cell)
        assert np.allclose(m.canvas, far)  # the plain argmax goes to the far cell
        kept = proto.keep_layout(p, d, m, layout, cell, radius=5.0, margin=0.1)
        if stays:  # 0.75 is not 0.1 better than 0.7 near the layout point
            assert np.allclose(kept.canvas, layout)
            assert kept.similarity[0] == pytest.approx(0.7)
        else:
            assert np.allclose(kept.canvas, far)
    with pytest.raises(ValueError, match="one row per prototype"):
        proto.keep_layout(p, d, m, np.zeros((2, 2)), cell, 5.0, 0.1)


def test_the_prior_frame_is_the_object_box_even_when_the_crop_is_clipped():
    image = np.zeros((100, 200, 3), np.uint8)
    box = (0.0, 10.0, 40.0, 50.0)  # touches the left border: the crop is clipped there
    rect = CropRect.around(box, 200, 100, 0.5)
    crop = ImageCrop.of(image, rect, box)
    assert rect.x0 == 0  # clipped: the box is not centred in its crop
    x, y, w, h = references._frame(crop)
    assert (x + rect.x0, y + rect.y0, w, h) == box
    # mirrored crops mirror their box
    mx, my, mw, mh = crop.flipped().crop_box()
    assert (mw, mh) == (40.0, 50.0) and mx == pytest.approx(rect.width - x - w)
    # a crop without a box is framed by itself, a whole image by its pixels
    assert references._frame(ImageCrop.of(image, rect)) == (-0.5, -0.5, rect.width,
                                                            rect.height)
    assert references._frame(image) == (-0.5, -0.5, 200.0, 100.0)
