"""The images a job reads: the loader type and the target loop shared by the jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from annotator.io.images import ImageLoadError, resolve_image_path
from annotator.jobs.progress import TaskState

ImageLoader = Callable[[Path], np.ndarray]


def load_targets(targets: Sequence[str], image_root: str, loader: ImageLoader,
                 state: TaskState) -> Iterator[tuple[int, str, np.ndarray | str]]:
    """Per target in order: (1-based count, path, its image or why it cannot be read).
    ``Cancelled`` before each image; an unreadable one is reported done at once."""
    for done, path in enumerate(targets, start=1):
        state.check()
        try:
            image = loader(resolve_image_path(image_root, path))
        except (ImageLoadError, ValueError) as exc:
            state.set_progress(done, len(targets), path)
            yield done, path, str(exc)
            continue
        yield done, path, image
