"""Import the model stack without starving other threads of the GIL.

Importing torch, OpenCV, transformers and diffusers on a worker thread froze the GUI thread for
70-900 ms at a time, for two reasons, both GIL held for long stretches:

- full (generation 2) garbage collections: the imports grow the heap by hundreds of thousands
  of objects, and each growth by a quarter triggers a collection that traverses all of it
  (0.2-0.9 s each, measured with ``gc.callbacks``);
- ``dlopen`` of large native libraries, which CPython calls with the GIL held while their
  static initialisers run (libtorch_cpu alone takes about 0.6 s).

:func:`preload_model_stack` maps those libraries first through libc's ``dlopen`` called via
ctypes, which releases the GIL for the call (the later ``import`` finds them loaded), then
imports the Python modules one at a time with full collections held off: young collections
still run, and after each module the survivors are moved to the permanent generation
(``gc.freeze``), so no later collection traverses the module objects again. The collector's
thresholds are put back when the preload ends.

Nothing here imports a package before its native libraries are mapped, and every step is
optional: a library or module that is missing is skipped (the real import reports it later,
with its own message).
"""

from __future__ import annotations

import ctypes
import gc
import glob
import importlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NativeLib:
    """Native libraries of ``package`` (globs relative to its folder) and the dlopen mode."""

    package: str
    patterns: tuple[str, ...]
    global_symbols: bool = False


# In load order. torch loads libtorch_global_deps with RTLD_GLOBAL itself (on CUDA builds it
# pulls in the CUDA libraries), so it is mapped the same way here.
NATIVE_LIBS: tuple[NativeLib, ...] = (
    NativeLib("torch", ("lib/libtorch_global_deps.so",), global_symbols=True),
    NativeLib("torch", ("lib/libc10.so", "lib/libtorch_cpu.so", "lib/libc10_cuda.so",
                        "lib/libtorch_cuda.so", "lib/libtorch.so", "lib/libtorch_python.so",
                        "_C.*.so")),
    NativeLib("cv2", ("cv2*.so", "python-3*/cv2*.so")),
    NativeLib("tokenizers", ("tokenizers*.so",)),
    NativeLib("safetensors", ("_safetensors_rust*.so",)),
)

# The modules the engine and the SD + DINOv2 models import, heaviest stack first; the pairs
# name attributes of lazily importing packages (transformers, diffusers) to resolve.
MODULE_STEPS: tuple[str, ...] = (
    "numpy", "PIL.Image", "torch", "torch.nn.functional", "cv2", "annotator.engine",
    "annotator.features.sd_dino", "annotator.jobs.propagate", "torch.optim",
    "annotator.matching.head", "annotator.jobs.train", "safetensors.torch",
    "transformers", "transformers:CLIPTokenizer", "transformers:CLIPTextModel",
    "transformers:Dinov2Model", "diffusers", "diffusers:AutoencoderKL",
    "diffusers:DDPMScheduler", "diffusers:UNet2DConditionModel",
    # imported on their way by the first open otherwise: the retrainer's head folder (on the
    # GUI thread, 30 ms) and the image decoders of the first thumbnails
    "platformdirs", "annotator.features.cache", "PIL.JpegImagePlugin", "PIL.PngImagePlugin",
)


def _libc_dlopen() -> Callable[[bytes, int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # ctypes releases the GIL around foreign calls
        fn = libc.dlopen
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return fn  # type: ignore[no-any-return]


def native_library_paths(libs: Sequence[NativeLib] = NATIVE_LIBS) -> list[tuple[str, int]]:
    """(path, dlopen mode) of the native libraries present, in load order; the packages are
    located without being imported."""
    out = []
    for lib in libs:
        if lib.package in sys.modules:
            continue  # imported already: nothing left to gain
        try:
            spec = importlib.util.find_spec(lib.package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        base = list(spec.submodule_search_locations)[0]
        mode = os.RTLD_NOW | (os.RTLD_GLOBAL if lib.global_symbols else os.RTLD_LOCAL)
        for pattern in lib.patterns:
            for path in sorted(glob.glob(os.path.join(base, pattern))):
                out.append((path, mode))
    return out


def map_native_libraries(libs: Sequence[NativeLib] = NATIVE_LIBS) -> list[str]:
    """dlopen the native libraries with the GIL released; returns the paths mapped."""
    if sys.platform != "linux":
        return []  # the library names and the libc entry point are Linux's
    dlopen = _libc_dlopen()
    if dlopen is None:
        return []
    mapped = []
    for path, mode in native_library_paths(libs):
        if dlopen(path.encode(), mode):
            mapped.append(path)
        else:
            log.debug("preload: could not map %s", path)
    return mapped


def import_steps(
    steps: Sequence[str] = MODULE_STEPS, cancelled: Callable[[], bool] | None = None
) -> list[str]:
    """Import ``steps`` ("module" or "module:attribute") one at a time, yielding the GIL
    between them; stops early when ``cancelled()``. Returns the steps done."""
    done = []
    for step in steps:
        if cancelled is not None and cancelled():
            break
        name, _, attr = step.partition(":")
        try:
            module = importlib.import_module(name)
            if attr:
                getattr(module, attr)
        except Exception as exc:  # noqa: BLE001 (optional: the real import reports it)
            log.debug("preload: %s skipped (%s: %s)", step, type(exc).__name__, exc)
            continue
        done.append(step)
        time.sleep(0)  # let a waiting thread (the GUI) take the GIL now
    return done


def preload_model_stack(
    cancelled: Callable[[], bool] | None = None, steps: Sequence[str] = MODULE_STEPS
) -> list[str]:
    """Map the native libraries without the GIL, then import ``steps`` one at a time
    without full garbage collections (see the module docstring). Meant for a worker thread;
    returns the import steps done."""
    t = time.perf_counter()
    mapped = map_native_libraries()
    t_map = time.perf_counter() - t
    threshold = gc.get_threshold()
    gc.set_threshold(threshold[0], threshold[1], 1 << 30)  # no full collection meanwhile
    try:
        done = []
        for step in steps:
            done += import_steps((step,), cancelled)
            gc.freeze()  # module objects live as long as the process: never traverse them
    finally:
        gc.freeze()
        gc.set_threshold(*threshold)
    steps = done
    log.info("model stack preloaded: %d native libraries in %.2f s, %d modules in %.2f s",
             len(mapped), t_map, len(steps), time.perf_counter() - t - t_map)
    return steps
