"""The GUI worker fills a "{category}" prompt (CleanDIFT UNet) with the schema's name, for
propagation and for the similarity heatmap alike."""

from __future__ import annotations

import pytest

from annotator.engine import Engine
from annotator.features.content import ContentExtractor
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    open_demo_project,
    qt_isolated,
    show_image,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


class CategoryEngine:
    """The content engine, recording the categories it is asked for."""

    def __init__(self, calls: list[str]) -> None:
        self.on_download = None
        self.calls = calls
        self._engine = Engine(extractor=ContentExtractor())

    def for_category(self, category: str) -> Engine:
        self.calls.append(category)
        return self._engine

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._engine, name)


def test_worker_uses_the_schema_category(qtbot, tmp_path):  # noqa: ANN001
    calls: list[str] = []
    window = make_window(qtbot, lambda settings: CategoryEngine(calls))
    project = open_demo_project(window, tmp_path)
    with qtbot.waitSignal(window.controller.run_finished, timeout=30_000) as done:
        window.propagate()
    assert done.args == ["done"] and calls == [project.schema.name]
    show_image(window, "chelsea_mirror.jpg")
    with qtbot.waitSignal(window.controller.heatmap_ready, timeout=20_000):
        window.editor.heatmap_box.setChecked(True)
    assert calls == [project.schema.name] * 2 and project.schema.name
    window.close()
