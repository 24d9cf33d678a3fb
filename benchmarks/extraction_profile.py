"""Where the paper extraction's time goes on this CPU, per op, and what the options give.

Full-size SD 1.5 / DINOv2-base with random weights (``annotator.bench.models``, as in
``annotator bench``). Measures, each once after a warm-up (short runs):

1. a per-op profile (torch.profiler, self CPU time) of one 512 px SD tile (VAE encoder + UNet
   to s3) and of DINOv2 at 840 px, the ops grouped (convolution, matmul/linear, attention,
   softmax, GroupNorm, LayerNorm, SiLU/GELU, elementwise, copies); the paper extraction is 4 tiles
   + DINOv2, so the account scales the tile by 4; FLOPs per group from FlopCounterMode; each
   group's share of the time and its FLOP/s against the fp32 matmul peak;
2. options: bf16 (where the CPU has avx512_bf16/AMX: the bf16 matmul peak and the tile in bf16),
   fused GroupNorm + SiLU through torch.compile on the VAE's largest activation (1 x 128 x 512 x
   512), intra-op threads 1 vs all.

    python benchmarks/extraction_profile.py --out extraction-profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

GROUPS = (
    ("convolution", ("conv",)),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("softmax", ("softmax",)),
    # profiler keys read "aten::mm", FlopCounterMode's "aten.mm"
    ("matmul/linear", ("addmm", "aten::mm", "aten.mm", "bmm", "linear", "matmul", "baddbmm")),
    ("group_norm", ("group_norm",)),
    ("layer_norm", ("layer_norm",)),
    ("silu/gelu", ("silu", "gelu")),
    ("elementwise", ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::rsub")),
    ("copies/layout", ("copy_", "contiguous", "to_dense", "clone", "aten::to", "reorder",
                       "cat", "permute")),
)


def group_of(name: str) -> str:
    n = name.lower()
    for g, keys in GROUPS:
        if any(k in n for k in keys):
            return g
    return "other"


def profile(fn: Any) -> dict[str, Any]:
    """Self CPU seconds per op group over one call of ``fn`` (after a warm-up call)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    fn()
    t0 = time.perf_counter()
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - t0
    groups: dict[str, float] = defaultdict(float)
    ops: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        s = e.self_cpu_time_total / 1e6
        groups[group_of(e.key)] += s
        ops[e.key] += s
    flops = flop_groups(fn)
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:15]
    return {"wall_seconds": wall, "self_seconds": dict(groups), "flops": flops,
            "top_ops": dict(top)}


def flop_groups(fn: Any) -> dict[str, float]:
    from annotator.bench.util import count_flops

    with count_flops() as fc:
        fn()
    out: dict[str, float] = defaultdict(float)
    for op, n in fc.get_flop_counts().get("Global", {}).items():
        out[group_of(str(op))] += float(n)
    return dict(out)


def timed(fn: Any, reps: int = 1) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    from annotator.bench.models import build_components
    from annotator.bench.runner import synthetic_image
    from annotator.bench.util import machine_info, matmul_peak
    from annotator.features.config import preset
    from annotator.features.sd_dino import SDDinoExtractor

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--no-threads", action="store_true")
    args = ap.parse_args(argv)
    res: dict[str, Any] = {"machine": machine_info("cpu"), "loadavg_start": os.getloadavg()}
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    res["cpu_bf16"] = {f: (f in flags) for f in ("avx512_bf16", "amx_bf16", "amx_tile")}
    peak = matmul_peak("cpu", torch.float32, 4096, 2.0)["flops_per_s"]
    res["peak_fp32_flops_per_s"] = peak
    print(f"fp32 matmul peak {peak / 1e12:.3f} TFLOP/s, load {os.getloadavg()[0]:.2f}",
          flush=True)

    sd, dino = build_components(None, "cpu")
    cfg = preset("paper")
    ext = SDDinoExtractor(sd, dino, cfg, "cpu", torch.float32)
    tile = ext.tiles(np.zeros((cfg.sd_size, cfg.sd_size, 3), np.uint8))[:1]
    canvas = synthetic_image((cfg.dino_size, cfg.dino_size), 1)

    def sd_tile() -> Any:
        return ext.sd_tile_features(tile)

    def dino_run() -> Any:
        return ext.dino_features([canvas])

    parts = {"sd_tile": profile(sd_tile), "dino": profile(dino_run)}
    res["profile"] = parts
    total: dict[str, float] = defaultdict(float)
    flops: dict[str, float] = defaultdict(float)
    for name, p in parts.items():
        k = len(cfg.sd_tile_offsets) ** 2 if name == "sd_tile" else 1
        for g, s in p["self_seconds"].items():
            total[g] += k * s
        for g, f in p["flops"].items():
            flops[g] += k * f
    all_s = sum(total.values())
    all_f = sum(flops.values())
    account = {g: {"seconds": s, "share": s / all_s, "flops": flops.get(g, 0.0),
                   "fraction_of_peak": (flops.get(g, 0.0) / s / peak) if s else None}
               for g, s in sorted(total.items(), key=lambda kv: -kv[1])}
    res["paper_extraction_account"] = {"groups": account, "self_seconds": all_s,
                                       "flops": all_f,
                                       "fraction_of_peak": all_f / all_s / peak}
    print(f"paper extraction (profiled, 4 tiles + DINOv2): {all_s:.1f} s, "
          f"{all_f / 1e12:.2f} TFLOP, {100 * all_f / all_s / peak:.1f} % of peak", flush=True)
    for g, a in account.items():
        fp = a["fraction_of_peak"]
        print(f"  {g:<15}{a['seconds']:7.2f} s {100 * a['share']:5.1f} %  "
              f"{a['flops'] / 1e12:6.3f} TFLOP  "
              f"{'-' if not fp else f'{100 * fp:.0f} % of peak'}", flush=True)

    # ---- options
    opts: dict[str, Any] = {}
    n = torch.get_num_threads()
    opts["sd_tile_threads_all_s"] = timed(sd_tile)
    opts["dino_fp32_s"] = timed(dino_run)
    if not args.no_threads:
        torch.set_num_threads(1)
        try:
            opts["sd_tile_threads_1_s"] = timed(sd_tile)
        finally:
            torch.set_num_threads(n)
        print(f"  threads: SD tile {opts['sd_tile_threads_all_s']:.2f} s with {n}, "
              f"{opts['sd_tile_threads_1_s']:.2f} s with 1", flush=True)

    x = torch.randn(1, 128, 512, 512).to(memory_format=torch.channels_last)
    gn = sd.vae.encoder.down_blocks[0].resnets[0].norm1
    act = torch.nn.SiLU()

    def gn_silu() -> Any:
        with torch.inference_mode():
            return act(gn(x))

    opts["groupnorm_silu_eager_s"] = timed(gn_silu, 3)
    opts["groupnorm_silu_bytes"] = x.numel() * 4
    if not args.no_compile:
        try:
            t0 = time.perf_counter()
            fused = torch.compile(lambda t: act(gn(t)), dynamic=False)
            with torch.inference_mode():
                fused(x)
            opts["groupnorm_silu_compile_seconds"] = time.perf_counter() - t0

            def gn_silu_c() -> Any:
                with torch.inference_mode():
                    return fused(x)

            opts["groupnorm_silu_compiled_s"] = timed(gn_silu_c, 3)
            c_s = f"{opts['groupnorm_silu_compiled_s'] * 1e3:.0f} ms"
        except Exception as exc:  # noqa: BLE001 - report, do not fail the profile
            opts["groupnorm_silu_compiled_s"] = f"failed: {type(exc).__name__}: {exc}"[:300]
            c_s = "failed"
        print(f"  GroupNorm+SiLU 128x512x512: eager {opts['groupnorm_silu_eager_s'] * 1e3:.0f} ms,"
              f" torch.compile {c_s}", flush=True)

    if not args.no_bf16 and res["cpu_bf16"]["avx512_bf16"]:
        opts["peak_bf16_flops_per_s"] = matmul_peak("cpu", torch.bfloat16, 4096, 2.0)[
            "flops_per_s"]
        ext_b = SDDinoExtractor(sd, dino, cfg, "cpu", torch.bfloat16)
        for m in (sd.vae, sd.unet, sd.text_encoder, dino.model):
            m.to(torch.bfloat16)
        try:
            opts["sd_tile_bf16_s"] = timed(lambda: ext_b.sd_tile_features(tile))
            opts["dino_bf16_s"] = timed(lambda: ext_b.dino_features([canvas]))
            lo = ext_b.dino_features([canvas])
        finally:
            for m in (sd.vae, sd.unet, sd.text_encoder, dino.model):
                m.float()
        hi = ext.dino_features([canvas])
        opts["dino_bf16_max_rel_dev"] = float((lo - hi).abs().max() / hi.abs().max())
        k = len(cfg.sd_tile_offsets) ** 2
        f_tile = sum(parts["sd_tile"]["flops"].values())
        f_dino = sum(parts["dino"]["flops"].values())
        t_b = k * opts["sd_tile_bf16_s"] + opts["dino_bf16_s"]
        t_f = k * opts["sd_tile_threads_all_s"] + opts["dino_fp32_s"]
        opts["paper_bf16_seconds"] = t_b
        opts["paper_fp32_seconds"] = t_f
        opts["paper_bf16_fraction_of_bf16_peak"] = (k * f_tile + f_dino) / t_b / opts[
            "peak_bf16_flops_per_s"]
        opts["paper_fp32_fraction_of_fp32_peak"] = (k * f_tile + f_dino) / t_f / peak
        print(f"  bf16: matmul peak {opts['peak_bf16_flops_per_s'] / 1e12:.3f} TFLOP/s; SD tile "
              f"{opts['sd_tile_bf16_s']:.2f} s vs fp32 {opts['sd_tile_threads_all_s']:.2f} s; "
              f"DINOv2 {opts['dino_bf16_s']:.2f} s vs {opts['dino_fp32_s']:.2f} s; paper "
              f"extraction {t_b:.1f} s = {100 * opts['paper_bf16_fraction_of_bf16_peak']:.0f} % "
              f"of the bf16 peak (fp32: {t_f:.1f} s = "
              f"{100 * opts['paper_fp32_fraction_of_fp32_peak']:.0f} % of the fp32 peak); DINOv2 "
              f"bf16 max deviation {opts['dino_bf16_max_rel_dev']:.4f} of the largest value",
              flush=True)
    res["options"] = opts
    res["loadavg_end"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
