"""The model-stack preload (issue 9, defect 7): what made the GUI stall while the worker
imported torch & co. was full garbage collections over the growing heap and dlopen with the GIL
held. These tests check the mechanisms, not the timings (those are in BENCHMARKS.md)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

from annotator.jobs import preload


def test_steps_run_without_full_collections_and_leave_the_collector_as_it_was(tmp_path,
                                                                           monkeypatch):
    pkg = tmp_path / "heavy_pkg_for_preload"
    pkg.mkdir()
    # importing this allocates a large, growing heap, as torch and transformers do
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        BIG = []
        for i in range(300_000):
            BIG.append({"i": i, "t": (i, str(i))})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    full = []

    def watch(phase, info):  # noqa: ANN001, ANN202
        if phase == "start" and info["generation"] == 2:
            full.append(info)

    threshold = gc.get_threshold()
    frozen = gc.get_freeze_count()
    gc.callbacks.append(watch)
    try:
        done = preload.preload_model_stack(steps=("heavy_pkg_for_preload", "no_such_module_x"))
        # the module's objects went to the permanent generation: no collection visits them
        assert gc.get_freeze_count() > frozen + 300_000
    finally:
        gc.callbacks.remove(watch)
        gc.unfreeze()
        sys.modules.pop("heavy_pkg_for_preload", None)
    assert done == ["heavy_pkg_for_preload"]  # a missing module is skipped, not an error
    assert full == []  # no collection traversed the whole heap while it grew
    assert gc.get_threshold() == threshold  # the collector is as it was


def test_import_steps_stop_when_cancelled():
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 1

    assert preload.import_steps(("json", "csv", "email"), cancelled) == ["json"]


def test_native_libraries_are_mapped_before_their_package_is_imported():
    """In a fresh interpreter: the libraries of a package not yet imported are found without
    importing it, mapped with libc's dlopen, and the import afterwards still works."""
    code = textwrap.dedent("""
        import sys
        from annotator.jobs import preload
        libs = [preload.NativeLib("safetensors", ("_safetensors_rust*.so",))]
        paths = preload.native_library_paths(libs)
        assert paths and "safetensors" not in sys.modules, paths
        mapped = preload.map_native_libraries(libs)
        assert mapped == [p for p, _ in paths], mapped
        assert "safetensors" not in sys.modules
        maps = open("/proc/self/maps").read()
        assert paths[0][0] in maps  # loaded by dlopen, before any import
        import safetensors.numpy  # binds the mapped library
        assert preload.native_library_paths(libs) == []  # imported: nothing to do
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_after_the_preload_the_first_open_imports_nothing_on_its_way(tmp_path):
    """The retrainer's head folder (asked for on the GUI thread when a project is shown) and
    the decoders of the first thumbnails import modules lazily: the preload takes them, so a
    first open does not spend 30 ms of the GUI thread importing."""
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    code = textwrap.dedent(f"""
        import sys
        from annotator.jobs import preload
        light = [s for s in preload.MODULE_STEPS  # the diffusion stack: unrelated and slow
                 if not s.startswith(("transformers", "diffusers"))]
        assert preload.import_steps(light) == light
        from annotator.domain.project import ProjectSettings
        from annotator.jobs.train import heads_folder
        from PIL import Image
        before = set(sys.modules)
        heads_folder(ProjectSettings())
        for name in ("a.jpg", "b.png"):
            Image.open({str(tmp_path)!r} + "/" + name).load()
        print(sorted(set(sys.modules) - before))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
