"""The product path end to end in the GUI: project settings -> build_engine -> SD + DINOv2
extractor (tiny random models with the real layouts, loaded from folders) on the worker."""

from __future__ import annotations

import dataclasses

import pytest
from pycocotools.coco import COCO

from annotator.domain import ImageStatus
from annotator.gui.worker import default_engine_factory
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    open_demo_project,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


def test_propagate_with_the_real_engine_on_tiny_models(qtbot, tmp_path, tiny_model_dirs):
    sd_dir, dino_dir = tiny_model_dirs
    window = make_window(qtbot, default_engine_factory)
    project = open_demo_project(window, tmp_path)
    project.set_settings(dataclasses.replace(
        project.settings, sd_model=str(sd_dir), dino_model=str(dino_dir), device="cpu",
        dtype="fp32", preset="fast", fusion="concat", cache_dir=str(tmp_path / "cache"),
    ))
    states = []
    window.controller.model_state.connect(lambda state, detail: states.append(state))
    with qtbot.waitSignal(window.controller.run_finished, timeout=120_000) as finished:
        assert window.propagate()
    assert finished.args == ["done"], window.messages
    assert states[:1] == ["loading"] and states[-1] == "ready"
    predicted = project.paths_with_status(ImageStatus.PREDICTED)
    assert len(predicted) == len(project) - len(project.reference_paths())
    for path in predicted:
        kps = project.annotation(path).instances[0].keypoints
        assert all(kp.confidence is not None for kp in kps)
    out = tmp_path / "export.json"
    from annotator.io.coco import ExportChoice, ExportScope

    with qtbot.waitSignal(window.exporter.finished, timeout=60_000) as exported:
        assert window.export_coco(str(out), ExportChoice(ExportScope.PREDICTIONS))
    assert exported.args[1] == ""
    coco = COCO(str(out))
    assert len(coco.getAnnIds()) >= len(predicted)
    assert any((tmp_path / "cache").rglob("*.safetensors"))  # features went to the disk cache
    window.close()
