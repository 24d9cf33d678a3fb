"""Small helpers of the benchmark: device timers, memory sampling, matmul peak, machine info."""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_timer(device: str):
    """A perf_counter that first waits for the device's queued work."""

    def timer() -> float:
        sync(device)
        return time.perf_counter()

    return timer


class MemoryPeak:
    """Peak memory over a block: process RSS (sampled every 20 ms with psutil) on the CPU,
    torch.cuda.max_memory_allocated on CUDA. ``peak`` and ``before`` in bytes."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.before = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> MemoryPeak:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = int(torch.cuda.memory_allocated())
        else:
            self.before = self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = int(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, self._rss())

    def as_dict(self) -> dict[str, Any]:
        kind = "cuda_max_memory_allocated" if self.device.startswith("cuda") else "process_rss"
        return {"kind": kind, "before_bytes": self.before, "peak_bytes": self.peak,
                "increase_bytes": max(0, self.peak - self.before)}


def _best_rate(fn: Callable[[], Any], flops: float, device: str, seconds: float) -> float:
    """Best FLOP/s of ``fn`` (``flops`` per call) over timed rounds for about ``seconds``."""
    fn()
    sync(device)
    best, n = 0.0, 1
    t_end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync(device)
        dt = time.perf_counter() - t0
        best = max(best, n * flops / dt)
        if time.perf_counter() > t_end:
            break
        if dt < 0.05:
            n *= 4
    return best


def matmul_peak(device: str, dtype: torch.dtype, size: int, seconds: float = 2.0
                ) -> dict[str, Any]:
    """Measured peak of a square (size x size x size) matrix product, FLOP/s: the best of
    ``torch.matmul`` (BLAS: MKL on x86 CPU builds) and the same product as a 1x1 convolution
    over a channel-last input (oneDNN on the CPU), each the best of several timed rounds.

    Both are reported: on AMD CPUs MKL's float32 kernels run at about two thirds of oneDNN's,
    and the models' convolutions run on oneDNN, so a BLAS-only peak understates what the machine
    does (the paper extraction measured at 119 % of it)."""
    flops = 2.0 * size ** 3
    with torch.inference_mode():
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        mm = _best_rate(lambda: a @ b, flops, device, seconds / 2)
        side = int(round(size ** 0.5))
        if side * side == size:  # size pixels as a side x side channel-last image
            x = torch.randn(1, size, side, side, device=device, dtype=dtype).contiguous(
                memory_format=torch.channels_last)
            w = torch.randn(size, size, 1, 1, device=device, dtype=dtype)
            conv = _best_rate(lambda: torch.nn.functional.conv2d(x, w), flops, device,
                              seconds / 2)
        else:
            conv = 0.0
    kernel = "conv1x1" if conv > mm else "matmul"
    return {"size": size, "dtype": str(dtype).replace("torch.", ""),
            "flops_per_s": max(mm, conv), "kernel": kernel,
            "matmul_flops_per_s": mm, "conv1x1_flops_per_s": conv}


def _sdpa_cpu_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                   out_shape: Any = None, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


def _extra_flop_formulas() -> dict[Any, Any]:
    """FLOP formulas torch's counter lacks: the CPU flash-attention kernel that SDPA dispatches
    to on the CPU (torch counts the CUDA kernels only; without it every attention of the engine
    counted 0 FLOPs on the CPU, about 0.7 TFLOP per paper image)."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _sdpa_cpu_flop} if op is not None else {}


@contextlib.contextmanager
def count_flops(enabled: bool = True) -> Iterator[Any]:
    """FlopCounterMode over a block (yields the counter, or None when disabled)."""
    if not enabled:
        yield None
        return
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    with counter:
        yield counter


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil

        info["ram_bytes"] = int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover
        pass
    for mod in ("diffusers", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    info["device"] = device
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(device)
        info["device_memory_bytes"] = int(torch.cuda.get_device_properties(device).total_memory)
    else:
        info["device_name"] = info.get("cpu_model", "cpu")
    return info


COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def compile_modules(sd: Any, dino: Any, mode: str) -> Callable[[], None]:
    """``torch.compile`` the engine's hook-free parts in place: the VAE encoder, the UNet's down
    blocks and mid block (the up blocks carry the early-stop hooks and stay eager) and the
    DINOv2 encoder. ``mode`` "reduce-overhead" also captures CUDA graphs on CUDA. Compilation
    happens on the first call (the engine's one-off warm-up). Returns a function restoring the
    eager modules."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "off":
        return lambda: None
    targets = []
    if sd is not None:
        targets += [sd.vae.encoder, *sd.unet.down_blocks, sd.unet.mid_block]
    if dino is not None:
        targets.append(dino.model.encoder)
    for m in targets:
        m.compile(mode=None if mode == "default" else mode, dynamic=False)

    def restore() -> None:
        for m in targets:
            m._compiled_call_impl = None  # nn.Module.compile's handle: eager again

    return restore
