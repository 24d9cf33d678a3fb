"""Where a preset's extraction time goes on a GPU: device busy time against wall time, the top
ops by device time and by host time, and images/s with peak memory per batch size.

Full-size SD 1.5 / DINOv2-base with random weights (``annotator.bench.models``, as in
``annotator bench``), the engine exactly as the bench builds it (``SDDinoExtractor``). For each
batch size: one warm-up call, then the best of ``--reps`` timed calls over ``--images`` images
and ``torch.cuda.max_memory_allocated``. Then one call under ``torch.profiler`` at the first
batch size: if the device is busy for much less than the wall time, the host is the bottleneck.
The time per stage of one batch (SD tiles to the host, stitched, DINOv2) and, with ``--layouts``,
the same for the UNet/VAE in another memory format or for the ``io`` probe (uint8 pixels to the
device, tiles stitched there). Figures of 2026-12-04 on an H200: BENCHMARKS.md, "GPU runs".

    python benchmarks/gpu_profile.py --preset paper --dtype bf16 --batches 8,16 --out prof.json

On a machine without CUDA it runs the same steps on the CPU with scaled-down models
(``--device cpu --tiny``; tests/test_gpu_profile.py).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from annotator.bench.models import build_components, tiny_configs
from annotator.bench.runner import _cfg, synthetic_image
from annotator.features.config import resolve_dtype
from annotator.features.sd_dino import SDDinoExtractor


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(ext: SDDinoExtractor, images: list, device: str, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        ext.extract(images)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _stages(
    ext: SDDinoExtractor, images: list, batch: int, device: str, reps: int
) -> dict[str, float]:
    """Seconds per batch of the extraction's parts: SD tiles on the device and back to the host
    (``sd_tile_features``), the same plus the host stitching (``_sd_maps``), DINOv2."""
    from annotator.features.letterbox import Letterbox

    cfg = ext.config
    batch_imgs = images[:batch]
    out: dict[str, float] = {}

    def best(fn: Any) -> float:
        fn()
        times = []
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return min(times)

    if cfg.uses_sd:
        sd_c = [Letterbox.fit(im.shape[1], im.shape[0], cfg.sd_size).apply(im) for im in batch_imgs]
        pix = torch.cat([ext.tiles(c) for c in sd_c])
        out["sd_tiles_to_host"] = best(lambda: ext.sd_tile_features(pix))
        out["sd_maps_stitched"] = best(lambda: ext._sd_maps(sd_c))
    if cfg.uses_dino:
        dn_c = [
            Letterbox.fit(im.shape[1], im.shape[0], cfg.dino_size).apply(im) for im in batch_imgs
        ]
        out["dino_to_host"] = best(lambda: ext.dino_features(dn_c))
    out["extract"] = best(lambda: ext.extract(batch_imgs))
    return out


def _table(prof: Any, key: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for e in sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:n]:
        rows.append(
            {
                "op": e.key,
                "calls": e.count,
                "self_device_ms": getattr(e, "self_device_time_total", 0.0) / 1e3,
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
            }
        )
    return rows


class _DeviceIO(SDDinoExtractor):
    """Probe of a variant (layout ``io``): pixels go to the device as uint8 and are scaled
    there; the SD tiles are stitched on the device in float32 and only the stitched maps come
    back to the host. The same float32 arithmetic as the engine's host path."""

    @torch.inference_mode()
    def _sd_maps(self, canvases: list) -> list:
        import numpy as np

        from annotator.features.sd_dino import stitch, unet_features

        cfg, sd = self.config, self.sd
        t, offs = cfg.sd_tile, cfg.sd_tile_offsets
        crops = [c[oy:oy + t, ox:ox + t] for c in canvases for oy in offs for ox in offs]
        u8 = torch.from_numpy(np.stack(crops)).to(self.device).permute(0, 3, 1, 2)
        x = (u8.float() / 127.5 - 1.0).to(self.dtype)
        vae, sched = sd.vae, sd.scheduler
        lat = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        noise = self.noise().to(lat.device, lat.dtype).expand_as(lat)
        tt = torch.tensor([cfg.timestep], dtype=torch.long)
        noisy = sched.add_noise(lat.float().cpu(), noise.float().cpu(), tt).to(self.device,
                                                                              self.dtype)
        emb = self.prompt_embedding().expand(lat.shape[0], -1, -1)
        feats = unet_features(sd.unet, noisy, cfg.timestep, emb, True, None)
        n_t = len(offs) ** 2
        out = []
        for i in range(len(canvases)):
            out.append({k: stitch(feats[k][i * n_t:(i + 1) * n_t], offs, t, cfg.sd_size)
                        for k in cfg.sd_layers})
        return [{k: v.cpu() for k, v in d.items()} for d in out]


def _make(
    sd: Any, dino: Any, cfg: Any, device: str, dtype: torch.dtype, batch: int, layout: str
) -> SDDinoExtractor:
    cls = _DeviceIO if layout == "io" else SDDinoExtractor
    ext = cls(sd, dino, cfg, device, dtype, batch_size=batch)
    if layout not in ("engine", "io"):
        fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}[layout]
        for m in (sd.unet, sd.vae):
            m.to(memory_format=fmt)
    return ext


def _measure(
    sd: Any,
    dino: Any,
    cfg: Any,
    device: str,
    dtype: torch.dtype,
    images: list,
    batches: list[int],
    layout: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    res: dict[str, Any] = {"batches": {}}
    for b in batches:
        ext = _make(sd, dino, cfg, device, dtype, b, layout)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        ext.extract(images[:b])  # warm-up
        best = _time(ext, images, device, args.reps)
        peak = torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None
        res["batches"][b] = {"seconds": best, "images_per_s": len(images) / best, "peak_gb": peak}
        print(f"{layout} batch {b}: {len(images) / best:.2f} images/s, peak {peak} GB", flush=True)

    res["stages"] = _stages(
        _make(sd, dino, cfg, device, dtype, batches[0], layout),
        images,
        batches[0],
        device,
        args.reps,
    )
    print(
        f"{layout} stages per batch of {batches[0]}: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in res["stages"].items()),
        flush=True,
    )
    if args.no_profile:
        return res
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    ext = _make(sd, dino, cfg, device, dtype, batches[0], layout)
    ext.extract(images[: batches[0]])
    _sync(device)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        ext.extract(images)
        _sync(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    dev_total = sum(getattr(e, "self_device_time_total", 0.0) for e in events) / 1e6
    cpu_total = sum(e.self_cpu_time_total for e in events) / 1e6
    res["profile"] = {
        "batch": batches[0],
        "wall_s": wall,
        "device_busy_s": dev_total,
        "host_op_s": cpu_total,
        "device_busy_fraction": dev_total / wall if wall else None,
        "top_device": _table(prof, "self_device_time_total", args.top),
        "top_host": _table(prof, "self_cpu_time_total", args.top),
    }
    print(
        f"{layout}: profile at batch {batches[0]} (under the profiler): wall {wall:.3f} s, "
        f"device busy {dev_total:.3f} s ({100 * dev_total / wall:.0f}%), "
        f"host op time {cpu_total:.3f} s"
    )
    for name in ("top_device", "top_host"):
        print(name)
        for r in res["profile"][name]:
            print(
                f"  {r['self_device_ms']:9.1f} ms dev {r['self_cpu_ms']:9.1f} ms host "
                f"{r['calls']:6d}x  {r['op'][:90]}"
            )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--dtype", default="bf16", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="8,16")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument(
        "--layouts",
        default="engine",
        help="comma-separated: engine (the extractor's own memory format for the UNet "
        "and VAE), contiguous, channels_last",
    )
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="scaled-down models (a dry run)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    device = args.device
    dtype = resolve_dtype(args.dtype, device.split(":")[0])
    cfg = _cfg(args.preset, None)
    t = time.perf_counter()
    sd, dino = build_components(tiny_configs() if args.tiny else None, "cpu", keep_decoder=False)
    for m in (sd.vae, sd.unet, sd.text_encoder, dino.model):
        m.to(device=device, dtype=dtype)
    print(f"models built and moved in {time.perf_counter() - t:.1f} s", flush=True)
    images = [synthetic_image((480, 640), 100 + i) for i in range(args.images)]
    res: dict[str, Any] = {
        "preset": args.preset,
        "dtype": str(dtype),
        "device": device,
        "config": {
            "sd_size": cfg.sd_size,
            "tiles": len(cfg.sd_tile_offsets) ** 2,
            "dino_size": cfg.dino_size,
            "grid": cfg.grid,
        },
    }
    if device.startswith("cuda"):
        res["device_name"] = torch.cuda.get_device_name()
    batches = [int(b) for b in args.batches.split(",")]
    res["layouts"] = {}
    if "io" in args.layouts.split(","):
        a = _make(sd, dino, cfg, device, dtype, 2, "engine").extract(images[:2])
        b = _make(sd, dino, cfg, device, dtype, 2, "io").extract(images[:2])
        dev = max(float((x.layers[k] - y.layers[k]).abs().max()) for x, y in zip(a, b)
                  for k in x.layers)
        res["io_max_abs_difference"] = dev
        print(f"io vs engine: max abs difference of the maps {dev}", flush=True)
    for layout in args.layouts.split(","):
        res["layouts"][layout] = _measure(
            sd, dino, cfg, device, dtype, images, batches, layout, args
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
