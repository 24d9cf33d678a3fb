"""Feature cache reliability: it owns its folder, never deletes what it did not write, never
uses a corrupt entry (data or metadata) and never aborts a run on a disk problem."""

import json
import logging
import os

import numpy as np
import pytest
import torch

from annotator.domain.project import ProjectSettings
from annotator.features.cache import MARKER_NAME, CacheFolderError, FeatureCache
from annotator.features.extractor import FeatureMaps
from annotator.features.letterbox import Letterbox
from tests.reliability_util import fill, remount_readonly, tmpfs


def _maps(seed=0):
    g = torch.Generator().manual_seed(seed)
    return FeatureMaps(layers={"a": torch.randn(2, 3, 3, generator=g),
                               "b": torch.randn(1, 2, 2, generator=g)},
                       letterbox=Letterbox(40, 30, 48, 48, 36, 0, 6), grid=3)


def _same(a, b):
    return (a.letterbox == b.letterbox and a.grid == b.grid and set(a.layers) == set(b.layers)
            and all(torch.equal(a.layers[k], b.layers[k]) for k in a.layers))


KEY = "ab" * 32


def _entry(cache):
    (path,) = [p for p in cache.directory.glob("*/*.safetensors")]
    return path


def test_refuses_a_folder_with_other_content_and_leaves_it_alone(tmp_path):
    models = tmp_path / "my_models"
    (models / "sdxl").mkdir(parents=True)
    weights = models / "sdxl" / "model.safetensors"
    weights.write_bytes(b"w" * 1000)
    (models / "sdxl" / "old.tmp").write_bytes(b"t")
    os.utime(models / "sdxl" / "old.tmp", (0, 0))  # "stale" by the old rule
    with pytest.raises(CacheFolderError, match="holds other files"):
        FeatureCache(models, disk_bytes=1)
    assert weights.read_bytes() == b"w" * 1000 and (models / "sdxl" / "old.tmp").exists()
    assert not (models / MARKER_NAME).exists()


def test_creates_and_marks_its_folder_and_adopts_an_empty_one(tmp_path):
    FeatureCache(tmp_path / "new" / "cache").put(KEY, _maps())
    assert (tmp_path / "new" / "cache" / MARKER_NAME).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    FeatureCache(empty)
    assert (empty / MARKER_NAME).is_file()
    FeatureCache(empty)  # reopening a marked folder is fine


def test_eviction_deletes_only_its_own_entries(tmp_path):
    folder = tmp_path / "c"
    cache = FeatureCache(folder, memory_bytes=0, disk_bytes=1)  # every put evicts everything
    # files the user put there later, including names that look like cache files
    planted = [folder / "sdxl" / "model.safetensors", folder / "ab" / "model.safetensors",
               folder / "ab" / ("cd" * 32 + ".safetensors"),  # an entry name in the wrong shard
               folder / "ab" / "x.tmp", folder / "notes.txt"]
    for p in planted:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"keep")
        os.utime(p, (0, 0))
    for i in range(3):
        cache.put(f"k{i}", _maps(i))
    assert all(p.read_bytes() == b"keep" for p in planted)
    assert cache.stats().disk_entries == 0  # its own entries were evicted


def test_stale_temporary_files_of_our_naming_are_cleaned(tmp_path):
    cache = FeatureCache(tmp_path / "c", memory_bytes=0)
    shard = tmp_path / "c" / "ab"
    shard.mkdir()
    ours = shard / f".{'ab' * 32}.x1_y.kpc-tmp"
    ours.write_bytes(b"partial")
    os.utime(ours, (0, 0))
    cache.put(KEY, _maps())
    assert not ours.exists()


@pytest.mark.parametrize("cap", [0, -1, float("nan"), float("inf")])
def test_cap_must_be_positive_everywhere(tmp_path, cap):
    if cap in (0, -1):
        with pytest.raises(ValueError, match="> 0"):
            FeatureCache(tmp_path / "c", disk_bytes=int(cap))
    with pytest.raises(ValueError, match="cache_cap_gb"):
        ProjectSettings(cache_cap_gb=cap)


def test_cap_in_a_project_file_and_cli_is_checked(tmp_path):
    from annotator.cli import main as cli_main
    from annotator.domain.project import ImageRecord, Project
    from annotator.domain.schema import KeypointSchema
    from annotator.io.project_file import ProjectFileError, load_project, project_to_dict

    doc = project_to_dict(Project(str(tmp_path), [ImageRecord("a.png")],
                                  KeypointSchema("s", ("p",))))
    doc["settings"]["cache_cap_gb"] = 0
    (tmp_path / "p.kpproj.json").write_text(json.dumps(doc))
    with pytest.raises(ProjectFileError, match="cache_cap_gb"):
        load_project(tmp_path / "p.kpproj.json")
    with pytest.raises(SystemExit) as err:
        cli_main(["propagate", str(tmp_path / "x.json"), "--cache-cap-gb", "0"])
    assert err.value.code == 2


def test_settings_dialog_refuses_a_zero_cap_and_a_foreign_folder(qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    from annotator.gui.settings_dialog import SettingsDialog

    shown = []
    monkeypatch.setattr(QMessageBox, "warning", lambda *a: shown.append(a[2]))
    dialog = SettingsDialog(ProjectSettings())
    qtbot.addWidget(dialog)
    dialog.cache_cap.setValue(0.0)
    assert dialog.settings().cache_cap_gb > 0
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.safetensors").write_bytes(b"w")
    dialog.cache_dir.edit.setText(str(models))
    dialog.accept()
    assert dialog.result() != SettingsDialog.DialogCode.Accepted
    assert shown and "holds other files" in shown[0]
    dialog.cache_dir.edit.setText(str(tmp_path / "new-cache"))
    dialog.accept()
    assert dialog.result() == SettingsDialog.DialogCode.Accepted


def test_every_single_byte_damage_is_detected_or_harmless(tmp_path):
    """Flip every byte of a small entry, header and data: an entry is either refused or
    identical to what was stored, never silently different (README figures)."""
    folder = tmp_path / "c"
    cache = FeatureCache(folder, memory_bytes=0)
    stored = cache.put(KEY, _maps())
    path = _entry(cache)
    original = path.read_bytes()
    header_len = int.from_bytes(original[:8], "little") + 8
    refused = harmless = 0
    logging.disable(logging.WARNING)
    try:
        for pos in range(len(original)):
            for mask in (0x01, 0x80):
                damaged = bytearray(original)
                damaged[pos] ^= mask
                path.write_bytes(bytes(damaged))
                got = FeatureCache(folder, memory_bytes=0).get(KEY)
                if got is None:
                    refused += 1
                    assert not path.exists()  # deleted
                else:
                    assert _same(got, stored), f"byte {pos} mask {mask:#x} silently changed it"
                    harmless += 1
    finally:
        logging.disable(logging.NOTSET)
    print(f"\ncache corruption: {len(original)} bytes ({header_len} header), "
          f"{2 * len(original)} flips: {refused} refused, {harmless} harmless, 0 silently used")
    assert refused >= 2 * (len(original) - header_len)  # every data flip is caught


def test_truncation_at_every_length_is_refused(tmp_path):
    folder = tmp_path / "c"
    cache = FeatureCache(folder, memory_bytes=0)
    cache.put(KEY, _maps())
    path = _entry(cache)
    original = path.read_bytes()
    for n in range(0, len(original), 7):
        path.write_bytes(original[:n])
        assert FeatureCache(folder, memory_bytes=0).get(KEY) is None


def test_metadata_edit_with_valid_json_is_refused(tmp_path):
    """The old checksum covered only the tensors: a moved letterbox offset was used."""
    folder = tmp_path / "c"
    cache = FeatureCache(folder, memory_bytes=0)
    cache.put(KEY, _maps())
    path = _entry(cache)
    data = path.read_bytes()
    assert b'\\"offset_y\\": 6' in data
    path.write_bytes(data.replace(b'\\"offset_y\\": 6', b'\\"offset_y\\": 9'))
    assert FeatureCache(folder, memory_bytes=0).get(KEY) is None


def test_every_disk_read_is_verified_even_with_size_and_mtime_kept(tmp_path, monkeypatch):
    import annotator.features.cache as cache_mod

    folder = tmp_path / "c"
    FeatureCache(folder, memory_bytes=0).put(KEY, _maps())
    calls = []
    real = cache_mod._checksum
    monkeypatch.setattr(cache_mod, "_checksum", lambda *a: calls.append(1) or real(*a))
    reader = FeatureCache(folder, memory_bytes=0)
    for _ in range(3):
        assert reader.get(KEY) is not None
    assert len(calls) == 3
    path = _entry(reader)
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert reader.get(KEY) is None


def test_full_disk_degrades_to_memory(tmp_path, caplog):
    with tmpfs("64k") as where:
        cache = FeatureCache(where / "c")
        fill(where)
        big = FeatureMaps(layers={"a": torch.randn(64, 64, 64)},
                          letterbox=Letterbox(40, 30, 48, 48, 36, 0, 6), grid=64)
        with caplog.at_level(logging.WARNING):
            stored = cache.put(KEY, big)  # safetensors raises its own (non-OSError) error
        assert "not written to disk" in caplog.text
        assert cache.get(KEY) is stored
        assert not [p for p in (where / "c").rglob("*") if p.is_file()
                    and p.name != MARKER_NAME]  # no partial entry or temporary file left


def test_full_disk_from_safetensors_error(tmp_path, monkeypatch):
    import safetensors.torch

    def full(*_a, **_k):
        raise safetensors.SafetensorError("Error while serializing: No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    cache = FeatureCache(tmp_path / "c")
    out = cache.get_or_compute([np.zeros((4, 4, 3), np.uint8)], "fp", lambda ims: [_maps()])
    assert len(out) == 1 and cache.stats().disk_entries == 0


def test_read_only_cache_with_a_corrupt_entry(tmp_path):
    with tmpfs("1m") as where:
        folder = where / "c"
        cache = FeatureCache(folder, memory_bytes=0)
        cache.put(KEY, _maps(0))
        cache.put("other", _maps(1))
        path = next(folder.glob(f"*/{KEY}.safetensors"))
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        remount_readonly(where)
        ro = FeatureCache(folder, memory_bytes=0)
        assert ro.get(KEY) is None  # corrupt, cannot be deleted: a miss, no exception
        assert _same(ro.get("other"), FeatureCache(None, use_disk=False).put("x", _maps(1)))
        out = ro.get_or_compute([np.zeros((4, 4, 3), np.uint8)], "fp", lambda ims: [_maps(2)])
        assert len(out) == 1  # computed, not cached, no exception


def test_unwritable_new_folder_computes_without_cache(tmp_path):
    with tmpfs("64k") as where:
        remount_readonly(where)
        cache = FeatureCache(where / "c")
        out = cache.get_or_compute([np.zeros((4, 4, 3), np.uint8)], "fp", lambda ims: [_maps()])
        assert len(out) == 1
