"""Out of memory during extraction: retry with a smaller batch, then a clear error."""

import numpy as np
import pytest
import torch

from annotator.engine import Engine, OutOfMemory
from annotator.features.content import ContentExtractor


class FlakyExtractor(ContentExtractor):
    """Runs out of memory whenever it is asked to process more than ``fits`` images at once."""

    def __init__(self, batch_size: int, fits: int) -> None:
        super().__init__()
        self.batch_size, self.fits, self.calls = batch_size, fits, []

    def extract(self, images):
        self.calls.append(self.batch_size)
        if self.batch_size > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().extract(images)


def images(n=3):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(n)]


def test_retries_with_halved_batch():
    ext = FlakyExtractor(batch_size=8, fits=2)
    maps = Engine(extractor=ext).features_many(images())
    assert len(maps) == 3 and ext.calls == [8, 4, 2]
    assert ext.batch_size == 2  # remembered for the next images


def test_gives_up_with_a_clear_error_at_batch_one():
    ext = FlakyExtractor(batch_size=2, fits=0)
    with pytest.raises(OutOfMemory, match="fast preset, fp16/bf16"):
        Engine(extractor=ext).features_many(images())
    assert ext.calls == [2, 1]


def test_other_errors_pass_through():
    class Broken(ContentExtractor):
        def extract(self, images):
            raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        Engine(extractor=Broken()).features_many(images(1))
