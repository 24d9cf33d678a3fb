"""One engine factory (annotator.jobs.engine_factory): a preset means the same thing whichever
path wrote the settings (a project file, the GUI's settings, the CLI's flags, a Ray actor)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle

import pytest

from annotator.domain import KeypointSchema, ProjectSettings
from annotator.features.config import DIY, GEOAWARE, PAPER
from annotator.io.project_file import load_project, new_project, project_to_dict, save_project
from annotator.jobs.engine_factory import (
    EngineSettingsError,
    build_engine,
    preset_values,
    propagation_flip,
    resolve,
)


def _project_file(tmp_path, settings: dict) -> ProjectSettings:
    """A project file whose settings object is exactly ``settings``, loaded back."""
    (tmp_path / "imgs").mkdir(exist_ok=True)
    doc = project_to_dict(new_project(tmp_path / "imgs", KeypointSchema("cat", ("a", "b"))))
    doc["settings"] = settings
    path = tmp_path / "p.kpproj.json"
    path.write_text(json.dumps(doc))
    return load_project(path).settings


def _geoaware_parts(cfg) -> tuple:
    return (cfg.preset, cfg.fusion, cfg.softargmax_window, cfg.flip, cfg.flip_criterion,
            cfg.timestep, cfg.freeu)


def test_geoaware_project_file_reaches_the_engine_as_geoaware(tmp_path):
    """The bug this guards: ProjectSettings' defaults (copca, flip, soft-argmax) used to be
    passed over the preset's own values, so a geoaware project ran copca fusion."""
    want = ("geoaware", "concat", 11, True, "mutual_nn", 50, True)
    assert _geoaware_parts(GEOAWARE) == want
    only_preset = _project_file(tmp_path, {"preset": "geoaware"})
    assert _geoaware_parts(resolve(only_preset)[0]) == want
    # the same project saved by this version (every field, None = the preset's own) and read
    saved = tmp_path / "saved.kpproj.json"
    project = new_project(tmp_path / "imgs", KeypointSchema("cat", ("a", "b")))
    project.set_settings(ProjectSettings(preset="geoaware"))
    save_project(project, saved)
    assert json.loads(saved.read_text())["settings"]["fusion"] is None
    assert resolve(load_project(saved).settings)[0] == resolve(only_preset)[0]
    # the engine the GUI worker builds from it (nothing loads until first use)
    engine = build_engine(only_preset, cache_dir=str(tmp_path / "cache"))
    assert _geoaware_parts(engine.config) == want and not engine.loaded


def test_diy_project_file_gives_the_adapter_and_its_window(tmp_path):
    cfg = resolve(_project_file(tmp_path, {"preset": "diy"}))[0]
    assert (cfg.fusion, cfg.adapter, cfg.softargmax_window, cfg.flip) == \
        ("dino", "diy-sc", 15, False) == (DIY.fusion, DIY.adapter, DIY.softargmax_window, DIY.flip)
    assert not propagation_flip(ProjectSettings(preset="diy"))


def test_explicit_values_of_old_files_are_kept_not_migrated(tmp_path):
    old = _project_file(tmp_path, {"preset": "geoaware", "fusion": "copca", "flip": True,
                                   "soft_argmax": False})
    cfg = resolve(old)[0]
    assert (cfg.fusion, cfg.flip, cfg.softargmax_window, cfg.flip_criterion) == \
        ("copca", True, 0, "mutual_nn")


def test_bad_setting_types_are_named(tmp_path):
    from annotator.io.project_file import ProjectFileError

    with pytest.raises(ProjectFileError, match="setting 'flip' is 'yes', expected bool or null"):
        _project_file(tmp_path, {"flip": "yes"})
    with pytest.raises(EngineSettingsError, match="fusion"):
        resolve(ProjectSettings(fusion="nope"))
    with pytest.raises(EngineSettingsError, match="unknown FeatureConfig fields"):
        resolve(ProjectSettings(), config_overrides={"windw": 3})


def test_preset_values_and_propagation_flip():
    # paper and fast: hard argmax unless asked (real DINOv2 features: BENCHMARKS.md)
    assert preset_values("paper") == preset_values("fast") == \
        type(preset_values("paper"))("copca", True, False)
    assert preset_values("geoaware").fusion == "concat" and preset_values("diy").fusion == "dino"
    assert propagation_flip(ProjectSettings()) and propagation_flip(ProjectSettings(preset="x"))
    assert not propagation_flip(ProjectSettings(flip=False))
    assert propagation_flip(ProjectSettings(preset="diy", flip=True))


def _cli_args(*argv: str) -> argparse.Namespace:
    from annotator.cli.common import add_engine_arguments

    p = argparse.ArgumentParser()
    add_engine_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("name", ["paper", "fast", "geoaware", "diy"])
def test_cli_flags_and_project_settings_give_the_same_engine(tmp_path, name):
    from annotator.cli.cluster import engine_factory
    from annotator.cli.common import engine_from_args, feature_config

    args = _cli_args("--preset", name, "--cache-dir", str(tmp_path / "c"))
    want = resolve(ProjectSettings(preset=name))[0]
    assert feature_config(args) == want
    assert engine_from_args(args).config == want
    # what a Ray actor builds: the same factory, pickled with the flags' settings
    actor_engine = pickle.loads(pickle.dumps(engine_factory(args)))()
    assert actor_engine.config == want


def test_cli_overrides_apply_after_the_preset(tmp_path):
    from annotator.cli.common import feature_config

    fc = tmp_path / "fc.json"
    fc.write_text(json.dumps({"preset": "tiny", "grid": 30, "dino_size": 420}))
    cfg = feature_config(_cli_args("--feature-config", str(fc), "--fusion", "concat",
                                   "--no-soft-argmax", "--flip-criterion", "mutual_nn"))
    assert (cfg.preset, cfg.grid, cfg.fusion, cfg.softargmax_window, cfg.flip_criterion) == \
        ("tiny", 30, "concat", 0, "mutual_nn")
    assert cfg == dataclasses.replace(PAPER, preset="tiny", grid=30, dino_size=420,
                                      fusion="concat", softargmax_window=0,
                                      flip_criterion="mutual_nn")
    # the content descriptor uses a hard argmax unless asked
    assert feature_config(_cli_args("--extractor", "content")).softargmax_window == 0
    assert feature_config(_cli_args("--extractor", "content", "--soft-argmax")) \
        .softargmax_window == PAPER.softargmax_window


def test_gui_worker_builds_through_the_factory(tmp_path):
    from annotator.gui.worker import default_engine_factory

    settings = ProjectSettings(preset="diy", cache_dir=str(tmp_path / "cache"))
    assert default_engine_factory(settings).config == resolve(settings)[0]
