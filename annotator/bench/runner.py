"""``annotator bench``: the optimised engine against a reference-style baseline, in one run.

Models are the full-size SD 1.5 / DINOv2 architectures from ``benchmarks/configs`` with seeded
random weights (same shapes and FLOPs as the real ones). Measured, side by side:

1. seconds per image for each preset, optimised ``SDDinoExtractor`` vs ``BaselineExtractor``
   (fp32, batch 1, full UNet, VAE decoder, prompt encoded per image, classic attention), ratio;
2. FLOPs per image (torch.utils.flop_counter) and achieved FLOP/s against a matmul peak measured
   in the same run;
3. transfer of K keypoints to N cached targets through the Engine (disk cache, and in memory),
   and the reference-style per-cell loop for one target;
4. peak memory (RSS on CPU, max_memory_allocated on CUDA) and cache bytes per image;
5. optional ablations (UNet early stop, SDPA, channels_last on one tile) and the bf16 deviation;
6. the GUI part through a callable supplied by the caller (jobs never import the GUI).

``run_bench(BenchOptions(...))`` returns a JSON-ready dict; ``format_table`` renders it.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotator.bench.baseline import BaselineExtractor, classic_attention, loop_match
from annotator.bench.util import (
    MemoryPeak,
    compile_modules,
    count_flops,
    machine_info,
    make_timer,
    matmul_peak,
)
from annotator.features.config import FeatureConfig, preset, resolve_device, resolve_dtype
from annotator.features.extractor import FeatureMaps
from annotator.features.letterbox import Letterbox

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class BenchOptions:
    """What to measure. ``presets`` maps a name to a FeatureConfig (None: the named preset)."""

    quick: bool = False
    device: str = "auto"
    dtype: str = "fp32"
    presets: dict[str, FeatureConfig | None] = field(
        default_factory=lambda: {"fast": None, "paper": None})
    configs: dict[str, dict[str, Any]] | None = None  # None: shipped full-size configs
    image_hw: tuple[int, int] = (480, 640)
    batch_size: int | None = None  # optimised engine; None: 1 on CPU, 8 on CUDA
    images: int | None = None  # images per optimised timing (None: batch size)
    reps: dict[str, int] | None = None  # timed repetitions per preset
    baseline_images: int = 1
    baseline_tiles: int | None = None  # measure this many tiles, extrapolate (None: all)
    keypoints: int = 30
    targets: int = 1000  # reported projection
    disk_targets: int | None = None  # measured from disk (None: targets)
    memory_targets: int | None = None
    transfer_preset: str = "paper"
    transfer_fusions: tuple[str, ...] = ("copca", "concat")
    transfer_prefetch: int = 8  # targets read ahead and matched together (0: lockstep only)
    transfer_repeats: int = 3  # repetitions per transfer case; the best steady state is kept
    lockstep_targets: int = 20  # targets of the slower cases (lockstep concat, copca run basis)
    pair_targets: int = 6  # targets of per-pair copca (about 0.25 s each on a 2-core CPU)
    copca_sample: int = 8  # targets in the copca run basis (with the reference)
    peak_size: int = 4096
    peak_seconds: float = 2.0
    map_channels: dict[str, int] | None = None  # synthetic cached maps (None: SD 1.5/DINOv2-B)
    ablations: bool = True
    precision_check: bool = True
    compile: str = "off"  # engine: torch.compile mode (annotator.bench.util.COMPILE_MODES)
    gui: Callable[[Progress], dict[str, Any]] | None = None
    command: str = ""

    def resolved(self) -> BenchOptions:
        o = copy.copy(self)
        gpu = resolve_device(self.device).startswith("cuda")
        if o.batch_size is None:
            o.batch_size = 8 if gpu else 1
        if o.reps is None:
            o.reps = ({"fast": 1, "paper": 1} if self.quick and not gpu
                      else {"fast": 3, "paper": 3})
        if self.quick and not gpu:
            o.baseline_tiles = 0 if o.baseline_tiles is None else o.baseline_tiles
            o.disk_targets = 60 if o.disk_targets is None else o.disk_targets
            o.memory_targets = 60 if o.memory_targets is None else o.memory_targets
        elif self.quick:  # the transfer runs on the CPU (fusion of cached CPU maps)
            o.disk_targets = 60 if o.disk_targets is None else o.disk_targets
            o.memory_targets = 60 if o.memory_targets is None else o.memory_targets
        o.disk_targets = o.targets if o.disk_targets is None else o.disk_targets
        o.memory_targets = o.targets if o.memory_targets is None else o.memory_targets
        return o


def synthetic_image(hw: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth random RGB image (uint8) of (H, W)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    small = rng.random((max(2, h // 32), max(2, w // 32), 3))
    y = np.linspace(0, small.shape[0] - 1, h)
    x = np.linspace(0, small.shape[1] - 1, w)
    img = small[np.round(y).astype(int)][:, np.round(x).astype(int)]
    img = img * 200 + rng.random((h, w, 3)) * 55
    return img.clip(0, 255).astype(np.uint8)


def _cfg(name: str, given: FeatureConfig | None) -> FeatureConfig:
    """``given``, else the preset as every engine gets it (annotator.jobs.engine_factory)."""
    from annotator.domain.project import ProjectSettings
    from annotator.jobs.engine_factory import resolve

    return given if given is not None else resolve(ProjectSettings(preset=name))[0]


def _tflops(x: float | None) -> float | None:
    return None if x is None else x / 1e12


# ---- models on the device ----------------------------------------------------------------
class _Models:
    """Master fp32 models; ``engine_parts`` gives the optimised engine's copies (dtype cast,
    moved to the device), ``baseline_parts`` the fp32 ones on the device. On CUDA only one set
    lives on the GPU at a time so each peak-memory figure is that engine's own."""

    def __init__(self, sd: Any, dino: Any, device: str, dtype: torch.dtype) -> None:
        self.sd, self.dino, self.device, self.dtype = sd, dino, device, dtype
        self._engine: tuple[Any, Any] | None = None

    def _move(self, sd: Any, dino: Any, device: str) -> None:
        for m in (sd.vae, sd.unet, sd.text_encoder, dino.model):
            m.to(device)

    def engine_parts(self) -> tuple[Any, Any]:
        if self._engine is None:
            if self.dtype == torch.float32:
                self._engine = (self.sd, self.dino)
            else:
                sd = copy.copy(self.sd)
                dino = copy.copy(self.dino)
                sd.vae = copy.deepcopy(self.sd.vae).to(self.dtype)
                sd.vae.decoder = None
                sd.unet = copy.deepcopy(self.sd.unet).to(self.dtype)
                sd.text_encoder = copy.deepcopy(self.sd.text_encoder).to(self.dtype)
                dino.model = copy.deepcopy(self.dino.model).to(self.dtype)
                self._engine = (sd, dino)
        self._move(self.sd, self.dino, "cpu")
        self._move(*self._engine, self.device)
        return self._engine

    def baseline_parts(self) -> tuple[Any, Any]:
        if self._engine is not None and self._engine[0] is not self.sd:
            self._move(*self._engine, "cpu")
        self._move(self.sd, self.dino, self.device)
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        return self.sd, self.dino


# ---- extraction ----------------------------------------------------------------------------
def _bench_engine(models: _Models, cfg: FeatureConfig, images: list[np.ndarray], batch: int,
                  reps: int, device: str, progress: Progress, compile_mode: str = "off"
                  ) -> dict[str, Any]:
    from annotator.features.sd_dino import SDDinoExtractor

    sd, dino = models.engine_parts()
    adapter = None
    if cfg.adapter and cfg.uses_dino:  # random weights: the same shapes and FLOPs
        import math

        from annotator.features.adapter import DiyAdapter

        width = int(dino.model.config.hidden_size)
        adapter = DiyAdapter(width, width // 4, math.gcd(32, width // 4))
    ext = SDDinoExtractor(sd if cfg.uses_sd else None, dino if cfg.uses_dino else None, cfg,
                          device, models.dtype, batch_size=batch, adapter=adapter)
    restore = compile_modules(sd if cfg.uses_sd else None, dino if cfg.uses_dino else None,
                              compile_mode)
    try:
        res = _time_engine(ext, cfg, images, batch, reps, device, progress)
    finally:
        restore()
    res["compile"] = compile_mode
    return res


def _time_engine(ext: Any, cfg: FeatureConfig, images: list[np.ndarray], batch: int, reps: int,
                 device: str, progress: Progress) -> dict[str, Any]:
    timer = make_timer(device)
    times: list[float] = []
    flops = None
    first = 0.0
    with MemoryPeak(device) as mem:
        # the first pass is the first call (one-off warm-up: allocations, kernel selection,
        # lazy initialisation) and counts FLOPs; the steady state is the best of the others
        for r in range(reps + 1):
            t0 = timer()
            with count_flops(r == 0) as fc:
                ext.extract(images)
            dt = timer() - t0
            if fc is not None:
                flops = fc.get_total_flops() / len(images)
            if r == 0:
                first = dt
            else:
                times.append(dt / len(images))
            progress(f"  engine {cfg.preset}: {dt / len(images):.3f} s/image "
                     f"({len(images)} image(s), batch {batch}"
                     f"{', first call + FLOP count' if r == 0 else ''})")
    best = min(times)
    return {"seconds_per_image": best, "seconds_per_image_all": times,
            "first_call_seconds": first,
            "warmup_seconds": max(0.0, first - best * len(images)),
            "images_per_second": 1.0 / best, "images": len(images), "batch_size": batch,
            "dtype": str(ext.dtype).replace("torch.", ""), "flops_per_image": flops,
            "achieved_flops_per_s": (flops / best) if flops else None,
            "memory": mem.as_dict()}


TILE_STAGES = ("vae_encode", "unet", "vae_decode")


def _bench_baseline(models: _Models, cfg: FeatureConfig, images: list[np.ndarray],
                    tiles: int | None, device: str, progress: Progress,
                    tile_record: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Baseline seconds per image. ``tiles``: SD tiles measured per image (None: all); the
    others are extrapolated from the measured ones (every tile is the same work). ``tiles=0``
    reuses the per-tile figures that an earlier preset with the same tile size left in
    ``tile_record`` (measuring one tile when there are none)."""
    sd, dino = models.baseline_parts()
    timer = make_timer(device)
    n_tiles = len(cfg.sd_tile_offsets) ** 2 if cfg.uses_sd else 0
    record = tile_record if tile_record is not None else {}
    measured = n_tiles if tiles is None else min(tiles, n_tiles)
    if measured == 0 and n_tiles and cfg.sd_tile not in record:
        measured = 1
    base = BaselineExtractor(sd if cfg.uses_sd else None, dino if cfg.uses_dino else None, cfg,
                             device, timer=timer)
    per_image: list[float] = []
    flops = None
    with MemoryPeak(device) as mem:
        for i, img in enumerate(images):
            base.stage_seconds = {}
            t0 = timer()
            # the baseline's own methods, tile by tile (extract_one without the stitching,
            # so that FLOPs can be counted per part)
            counted, tile_flops = _baseline_partial(base, img, measured, i == 0)
            dt = timer() - t0
            st = dict(base.stage_seconds)
            if measured != n_tiles:  # per-tile stages extended to all tiles
                if measured:
                    per_tile = {k: st[k] / measured for k in TILE_STAGES if k in st}
                else:
                    per_tile = record[cfg.sd_tile]["seconds"]
                    tile_flops = record[cfg.sd_tile]["flops"]
                for k, v in per_tile.items():
                    dt += v * (n_tiles - measured)
                    st[k] = v * n_tiles
                if counted is not None and tile_flops is not None:
                    counted += tile_flops * (n_tiles - measured)
            else:
                per_tile = {k: st[k] / n_tiles for k in TILE_STAGES if k in st}
            if n_tiles and measured and i == 0:
                record.setdefault(cfg.sd_tile, {"seconds": per_tile, "flops": tile_flops,
                                                "from": cfg.preset})
            if counted is not None:
                flops = counted
            per_image.append(dt)
            progress(f"  baseline {cfg.preset}: {dt:.3f} s/image"
                     + (f" ({measured} of {n_tiles} tiles measured)" if measured != n_tiles
                        else ""))
    best = min(per_image)
    reused = (measured == 0 and n_tiles > 0)
    return {"seconds_per_image": best, "seconds_per_image_all": per_image,
            "images_per_second": 1.0 / best, "images": len(images), "batch_size": 1,
            "dtype": "float32", "stages_seconds": st, "tiles_measured": measured,
            "tiles": n_tiles, "extrapolated": measured != n_tiles,
            "tile_figures_from": record[cfg.sd_tile]["from"] if reused else None,
            "first_call_included": True,  # one run per image: no separate warm-up
            "flops_per_image": flops,
            "achieved_flops_per_s": (flops / best) if flops else None,
            "memory": mem.as_dict()}


def _baseline_partial(base: BaselineExtractor, img: np.ndarray, tiles: int, count: bool
                      ) -> tuple[float | None, float | None]:
    """Prompt, the first ``tiles`` SD tiles and DINOv2 of the baseline. Returns (FLOPs
    counted, FLOPs of one tile) when ``count``, else (None, None)."""
    cfg = base.config
    other = tile_flops = 0.0
    with classic_attention(base.sd, base.dino):
        emb = None
        if cfg.uses_sd:  # DINOv2-only presets (diy) have no prompt
            with count_flops(count) as fc:
                emb = base._encode_prompt()
            other += fc.get_total_flops() if fc is not None else 0.0
        canvas = Letterbox.fit(img.shape[1], img.shape[0], cfg.sd_size).apply(img)
        t = cfg.sd_tile
        offs = [(oy, ox) for oy in cfg.sd_tile_offsets for ox in cfg.sd_tile_offsets][:tiles]
        for oy, ox in offs:
            crop = torch.from_numpy(np.ascontiguousarray(canvas[oy:oy + t, ox:ox + t]))
            with count_flops(count) as fc:
                base._tile(crop.permute(2, 0, 1)[None].float() / 127.5 - 1.0, emb)
            tile_flops += fc.get_total_flops() if fc is not None else 0.0
        if cfg.uses_dino:
            with count_flops(count) as fc:
                base._dino(Letterbox.fit(img.shape[1], img.shape[0], cfg.dino_size).apply(img))
            other += fc.get_total_flops() if fc is not None else 0.0
    if not count:
        return None, None
    return other + tile_flops, (tile_flops / tiles if tiles else None)


# ---- ablations on one tile ---------------------------------------------------------------
def _ablations(models: _Models, cfg: FeatureConfig, device: str, progress: Progress,
               batched_tiles: bool = False) -> dict[str, Any]:
    from annotator.features.sd_dino import SDDinoExtractor, unet_features

    sd, dino = models.engine_parts()
    ext = SDDinoExtractor(sd, dino, cfg, device, models.dtype)
    timer = make_timer(device)
    tile = torch.zeros(1, 3, cfg.sd_tile, cfg.sd_tile, device=device, dtype=models.dtype)
    emb = ext.prompt_embedding()
    unet, vae = sd.unet, sd.vae
    with torch.inference_mode():
        lat = vae.encode(tile).latent_dist.mean * vae.config.scaling_factor
    out: dict[str, Any] = {"tile": cfg.sd_tile}

    def run(name: str, fn: Callable[[], Any], reps: int = 1) -> None:
        if device.startswith("cuda"):
            fn()
        best = float("inf")
        for _ in range(reps):
            t0 = timer()
            fn()
            best = min(best, timer() - t0)
        out[name] = best
        progress(f"  ablation {name}: {best:.3f} s")

    def unet_pass(stop: bool) -> Callable[[], Any]:
        def fn() -> Any:
            with torch.inference_mode():
                return unet_features(unet, lat, cfg.timestep, emb, stop_early=stop)
        return fn

    reps = 3 if device.startswith("cuda") else 1
    run("unet_early_stop_sdpa_s", unet_pass(True), reps)  # = the engine (channels_last)
    run("unet_full_sdpa_s", unet_pass(False), reps)
    with classic_attention(sd, None):
        run("unet_early_stop_classic_attention_s", unet_pass(True), reps)
    # the extractor puts the UNet and VAE in channels_last; time the plain layout too
    unet.to(memory_format=torch.contiguous_format)
    try:
        run("unet_early_stop_contiguous_s", unet_pass(True), reps)
    finally:
        unet.to(memory_format=torch.channels_last)

    if batched_tiles:  # four tiles in one forward vs four forwards of one tile
        lat4 = lat.expand(4, -1, -1, -1).contiguous()
        emb4 = emb.expand(4, -1, -1)

        def unet4() -> Any:
            with torch.inference_mode():
                return unet_features(unet, lat4, cfg.timestep, emb4, stop_early=True)

        run("unet_4_tiles_one_batch_s", unet4, reps)
        out["unet_4_tiles_one_at_a_time_s"] = 4 * out["unet_early_stop_sdpa_s"]

    def vae_pass() -> Any:
        with torch.inference_mode():
            return vae.encode(tile).latent_dist.mean

    run("vae_encode_channels_last_s", vae_pass, reps)
    vae.to(memory_format=torch.contiguous_format)
    try:
        run("vae_encode_contiguous_s", vae_pass, reps)
    finally:
        vae.to(memory_format=torch.channels_last)

    def text() -> Any:
        ext._prompt_emb = None
        return ext.prompt_embedding()

    run("text_encode_s", text, reps)
    return out


# ---- bf16 deviation ------------------------------------------------------------------------
def _precision(models: _Models, cfg: FeatureConfig, device: str, progress: Progress
               ) -> dict[str, Any]:
    from annotator.features.sd_dino import SDDinoExtractor
    from annotator.matching.transfer import transfer

    imgs = [synthetic_image((480, 640), 11), synthetic_image((480, 640), 12)]
    sd, dino = models.engine_parts()
    low = SDDinoExtractor(sd, dino, cfg, device, models.dtype).extract(imgs)
    sd, dino = models.baseline_parts()
    ref = SDDinoExtractor(sd, dino, cfg, device, torch.float32).extract(imgs)
    fused_dev = 0.0
    for fusion_name in ("copca", "concat"):
        c = cfg.replace(fusion=fusion_name)
        e = SDDinoExtractor(sd, dino, c, device, torch.float32)
        a = e.describe_pair(ref[0], ref[1])
        b = e.describe_pair(low[0], low[1])
        fused_dev = max(fused_dev, *((x - y).abs().max().item() for x, y in zip(a, b)))
    rng = np.random.default_rng(3)
    pts = rng.random((30, 2)) * [639, 479]
    e = SDDinoExtractor(sd, dino, cfg, device, torch.float32)
    ra, rb = e.describe_pair(ref[0], ref[1])
    la, lb_ = e.describe_pair(low[0], low[1])
    p_ref = transfer(ra, rb, pts, ref[0].letterbox, ref[1].letterbox)
    p_low = transfer(la, lb_, pts, low[0].letterbox, low[1].letterbox)
    both = p_ref.found & p_low.found
    kp = np.linalg.norm(p_ref.points[both] - p_low.points[both], axis=1)
    raw = max((ref[0].layers[k] - low[0].layers[k].float()).abs().max().item()
              / max(ref[0].layers[k].abs().max().item(), 1e-12) for k in ref[0].layers)
    res = {"dtype": str(models.dtype).replace("torch.", ""),
           "max_abs_dev_fused_descriptor": fused_dev, "max_rel_dev_raw_maps": raw,
           "keypoints": int(len(pts)), "keypoints_compared": int(both.sum()),
           "max_keypoint_dev_px": float(kp.max()) if kp.size else None,
           "mean_keypoint_dev_px": float(kp.mean()) if kp.size else None,
           "keypoints_moved_over_1px": int((kp > 1.0).sum())}
    progress(f"  {res['dtype']} vs fp32: descriptor dev {fused_dev:.4f}, keypoints max "
             f"{res['max_keypoint_dev_px']} px")
    return res


# ---- transfer ------------------------------------------------------------------------------
class _CachedOnly:
    """Extractor stand-in for the transfer benchmark: every map comes from the cache."""

    name = "bench-cached"
    parts_transfer = True  # describe() is fusion.fuse: the engine's fast transfer path applies

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config

    @property
    def fingerprint(self) -> str:
        return f"bench-synthetic-{self.config.preset}"

    def extract(self, images: Any) -> list[FeatureMaps]:
        raise RuntimeError("transfer benchmark: features must come from the cache")

    def describe(self, maps: FeatureMaps) -> torch.Tensor:
        from annotator.features import fusion

        return fusion.fuse(self.config.fusion, maps.layers, maps.grid, self.config.pca_dim)

    def describe_pair(self, a: FeatureMaps, b: FeatureMaps) -> tuple[torch.Tensor, torch.Tensor]:
        from annotator.features import fusion

        return fusion.fuse_pair(self.config.fusion, a.layers, b.layers, a.grid,
                                self.config.pca_dim)


def synthetic_maps(cfg: FeatureConfig, hw: tuple[int, int], seed: int,
                   channels: dict[str, int] | None = None) -> FeatureMaps:
    """Random raw maps with the shapes the extractor produces for ``cfg``."""
    g = torch.Generator().manual_seed(seed)
    chans = {"s5": 1280, "s4": 1280, "s3": 640, "dino": 768, **(channels or {})}
    strides = {"s5": 64, "s4": 32, "s3": 16}
    layers: dict[str, torch.Tensor] = {}
    if cfg.uses_sd:
        for k in cfg.sd_layers:
            n = cfg.sd_size // strides[k]
            layers[k] = torch.randn(chans[k], n, n, generator=g)
    if cfg.uses_dino:
        n = cfg.dino_size // cfg.dino_patch
        layers["dino"] = torch.randn(chans["dino"], n, n, generator=g)
    lb = Letterbox.fit(hw[1], hw[0], cfg.canvas_size)
    return FeatureMaps(layers=layers, letterbox=lb, grid=cfg.grid)


def _key_image(i: int) -> np.ndarray:
    """A tiny distinct image standing for target ``i`` (only its hash is used)."""
    return np.frombuffer(np.int64(i).tobytes() * 6, np.uint8).reshape(4, 4, 3).copy()


class ImpossibleFigure(ValueError):
    """A timing that cannot be true (zero or negative, or a part larger than the whole): the
    benchmark reports no figure rather than this one."""


def check_transfer_figures(total: float, warmup: float, steady: float, timed: int) -> None:
    """Refuse figures that a run cannot have produced: a steady state or a warm-up that is
    zero or negative, or parts (warm-up + ``timed`` steady targets) that add up to more than
    the whole run. Raises :class:`ImpossibleFigure` naming the figures."""
    problems = []
    if not steady > 0:
        problems.append(f"steady state {steady * 1e3:.3f} ms/target is not > 0")
    if not warmup > 0:
        problems.append(f"warm-up {warmup:.3f} s is not > 0")
    if warmup + steady * timed > total * (1 + 1e-9) + 1e-12:
        problems.append(f"warm-up {warmup:.3f} s + {timed} x {steady * 1e3:.3f} ms exceeds the "
                        f"whole run ({total:.3f} s)")
    if problems:
        raise ImpossibleFigure("; ".join(problems))


def _time_transfer(make_engine: Callable[[], Any], ref_img: np.ndarray, pts: np.ndarray,
                   targets: list[np.ndarray], prefetch: int, projected: int,
                   repeats: int = 1, clock: Callable[[], float] = time.perf_counter
                   ) -> dict[str, Any]:
    """Time ``iter_transfer`` over ``targets`` in one run, the steady state measured directly:
    the arrival time of every result is recorded; the warm-up is the run up to the ``w``-th
    result (reference read and preparation, first-call costs, and the first batch of a
    prefetched run, which matches up to ``prefetch`` targets together: ``w = max(1,
    min(prefetch, n - 2))``); the steady state is the time from there to the last result
    divided by the targets after the warm-up. One-off = the warm-up (its ``w`` targets
    included); projection = one-off + steady x the other ``projected - w``. Each run uses a
    fresh engine. With ``repeats`` > 1 the run is repeated and the repetition with the
    smallest steady state is reported (all are listed). A repetition whose figures cannot be
    true is dropped (:func:`check_transfer_figures`); when every one is,
    :class:`ImpossibleFigure` is raised."""
    n = len(targets)
    if n < 2:
        raise ValueError("the transfer timing needs at least 2 targets")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    w = max(1, min(prefetch, n - 2))
    runs, refused = [], []
    for _ in range(repeats):
        eng = make_engine()
        t0 = clock()
        arrivals = []
        for _ in eng.iter_transfer([(ref_img, pts, None)], iter(targets), flip=False,
                                   prefetch=prefetch):
            arrivals.append((clock(), time.process_time()))
        if len(arrivals) != n:
            raise ValueError(f"iter_transfer gave {len(arrivals)} results for {n} targets")
        (tw, cw), (tn, cn) = arrivals[w - 1], arrivals[-1]
        steady, one_off = (tn - tw) / (n - w), tw - t0
        try:
            check_transfer_figures(tn - t0, one_off, steady, n - w)
        except ImpossibleFigure as exc:
            refused.append(str(exc))
            continue
        runs.append((steady, one_off, tn - t0, (cn - cw) / (n - w)))
    if not runs:
        raise ImpossibleFigure(f"no repetition gave a possible figure: {' | '.join(refused)}")
    steady, one_off, total, cpu = min(runs)
    return {"targets_measured": n, "seconds": total, "warmup_targets": w,
            "one_off_seconds": one_off, "seconds_per_target": steady,
            "cpu_seconds_per_target": cpu,
            "projected_seconds": one_off + steady * max(0, projected - w),
            "prefetch": prefetch,
            "repeats": repeats, "seconds_per_target_all": [r[0] for r in runs],
            "refused": refused}


def _bench_transfer(cfg: FeatureConfig, opts: BenchOptions, progress: Progress
                    ) -> dict[str, Any]:
    """Transfer of K keypoints to cached targets through ``Engine.iter_transfer``, per case:

    - ``concat`` (the fast default for many targets): parts fast path, ``transfer_prefetch``
      targets read ahead in a thread and matched together; and the lockstep path (prefetch 0,
      what the propagation job uses);
    - ``copca`` (paper): per-pair joint PCA; and ``copca-run``: one joint basis fitted on the
      reference and ``copca_sample`` targets (annotator.features.copca_basis), a one-off.

    From disk: a fresh cache object with no memory tier, every entry a distinct file read (and
    verified) once, the OS page cache warm (files just written). From memory: the memory tier
    holding 8 distinct target entries that the targets cycle through."""
    from annotator.engine import Engine
    from annotator.features.cache import FeatureCache
    from annotator.features.copca_basis import RunBasisExtractor, fit_copca_basis
    from annotator.matching.transfer import query_cells

    hw = opts.image_hw
    k = opts.keypoints
    rng = np.random.default_rng(5)
    pts = rng.random((k, 2)) * [hw[1] - 1, hw[0] - 1]
    stub = _CachedOnly(cfg)
    ref_img = _key_image(-1)
    out: dict[str, Any] = {"preset": cfg.preset, "fusion": cfg.fusion, "keypoints": k,
                           "projected_targets": opts.targets, "prefetch": opts.transfer_prefetch}
    n_distinct = 8
    with tempfile.TemporaryDirectory(prefix="annotator-bench-") as tmp:
        writer = FeatureCache(tmp, memory_bytes=0, disk_bytes=1 << 50)
        fp = stub.fingerprint
        n_disk = int(opts.disk_targets or 0)
        base_maps = [synthetic_maps(cfg, hw, s, opts.map_channels) for s in range(n_distinct + 1)]
        t0 = time.perf_counter()
        writer.put(writer.key(ref_img, fp), base_maps[-1])
        for i in range(max(n_disk, n_distinct)):
            writer.put(writer.key(_key_image(i), fp), base_maps[i % n_distinct])
        write_s = time.perf_counter() - t0
        st = writer.stats()
        per_image = st.disk_bytes / max(1, st.disk_entries)
        out["cache_bytes_per_image"] = per_image
        out["cache_write_seconds_per_image"] = write_s / max(1, st.disk_entries)
        progress(f"  cache: {per_image / 1e6:.1f} MB per image, written {st.disk_entries} "
                 f"entries")
        n_mem = int(opts.memory_targets or 0)
        mem = FeatureCache(None, memory_bytes=1 << 40, use_disk=False)
        mem.put(mem.key(ref_img, fp), base_maps[-1])
        for i in range(n_distinct):
            mem.put(mem.key(_key_image(i), fp), base_maps[i])

        def cache_for(where: str) -> FeatureCache:
            return (FeatureCache(tmp, memory_bytes=0, disk_bytes=1 << 50) if where == "disk"
                    else mem)

        def targets_for(where: str, n: int) -> list[np.ndarray]:
            return [_key_image(i if where == "disk" else i % n_distinct) for i in range(n)]

        cases: list[tuple[str, str, int, int]] = []  # (name, fusion, prefetch, max targets)
        fusions = [cfg.fusion] + [f for f in opts.transfer_fusions if f != cfg.fusion]
        for f in fusions:
            if f == "copca":
                cases += [("copca", "copca", 0, opts.pair_targets),
                          ("copca-run", "copca", 0, opts.lockstep_targets)]
            elif opts.transfer_prefetch > 0:
                cases += [(f, f, opts.transfer_prefetch, 1 << 30),
                          (f"{f}-lockstep", f, 0, opts.lockstep_targets)]
            else:
                cases += [(f, f, 0, 1 << 30)]
        out["fusions"] = {}
        for name, fusion_name, prefetch, cap in cases:
            fcfg = cfg.replace(fusion=fusion_name)
            res: dict[str, Any] = {}
            for where, n_all in (("disk", n_disk), ("memory", n_mem)):
                n = min(n_all, cap)
                if n < 2:
                    continue
                cache = cache_for(where)
                targets = targets_for(where, n)
                fit_s = 0.0
                if name == "copca-run":  # one-off: the basis from the reference + a sample
                    t = time.perf_counter()
                    sample = [cache.get(cache.key(im, fp)) for im in
                              [ref_img, *targets[: opts.copca_sample]]]
                    basis = fit_copca_basis([m.layers for m in sample if m is not None],
                                            fcfg.pca_dim)
                    fit_s = time.perf_counter() - t

                    def make(fcfg: FeatureConfig = fcfg, cache: FeatureCache = cache,
                             basis: Any = basis) -> Any:
                        return Engine(config=fcfg, cache=cache,
                                      extractor=RunBasisExtractor(_CachedOnly(fcfg), basis))
                else:
                    def make(fcfg: FeatureConfig = fcfg, cache: FeatureCache = cache) -> Any:
                        return Engine(config=fcfg, cache=cache,
                                      extractor=_CachedOnly(fcfg))  # type: ignore[arg-type]
                try:
                    r = _time_transfer(make, ref_img, pts, targets, prefetch, opts.targets,
                                       opts.transfer_repeats if name != "copca" else 1)
                except ImpossibleFigure as exc:  # reported as refused, not as a number
                    res[where] = {"targets_measured": n, "prefetch": prefetch,
                                  "refused": [str(exc)]}
                    progress(f"  transfer {name} from {where}: no figure ({exc})")
                    continue
                if fit_s:
                    r["basis_fit_seconds"] = fit_s
                    r["one_off_seconds"] += fit_s
                    r["projected_seconds"] += fit_s
                res[where] = r
                ms = r["seconds_per_target"] * 1e3
                progress(f"  transfer {name} from {where}: steady {ms:.1f} ms/target ({n} "
                         f"targets), one-off {r['one_off_seconds']:.2f} s -> "
                         f"{r['projected_seconds']:.1f} s for {opts.targets}")
            out["fusions"][name] = res
        # matching alone, vectorised vs the reference per-cell loop, on one fused pair
        from annotator.matching.transfer import transfer

        ra, rb = stub.describe_pair(base_maps[-1], base_maps[0])
        lb = base_maps[0].letterbox
        t = time.perf_counter()
        transfer(ra, rb, pts, lb, lb)
        vec = time.perf_counter() - t
        cells = query_cells(lb.to_canvas(pts), lb.canvas / cfg.grid, cfg.grid)
        t = time.perf_counter()
        loop_match(ra, rb, cells)
        loop = time.perf_counter() - t
        out["match_vectorised_seconds_per_target"] = vec
        out["match_loop_seconds_per_target"] = loop
        out["match_loop_projected_seconds"] = loop * opts.targets
        out["match_speedup"] = loop / vec if vec > 0 else None
        progress(f"  matching one target: vectorised {vec * 1000:.1f} ms, per-cell loop "
                 f"{loop:.2f} s")
    return out


# ---- driver --------------------------------------------------------------------------------
def run_bench(options: BenchOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run everything ``options`` asks for; returns the JSON-ready result."""
    from annotator.bench.models import build_components

    say = progress or (lambda msg: log.info("%s", msg))
    opts = options.resolved()
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device.split(":")[0])
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "date": _dt.date.today().isoformat(), "command": opts.command, "quick": opts.quick,
        "machine": machine_info(device), "dtype": str(dtype).replace("torch.", ""),
        "full_size_models": opts.configs is None, "compile": opts.compile,
    }
    say(f"device {device} ({result['machine']['device_name']}), engine dtype {dtype}")
    # the peak of the engine's own dtype (bf16 on CPUs with avx512_bf16/AMX has its own)
    peak_dtype = dtype
    peak = matmul_peak(device, peak_dtype, opts.peak_size, opts.peak_seconds)
    result["peak"] = peak
    say(f"matmul peak ({peak['dtype']}, {peak['size']}): {peak['flops_per_s'] / 1e12:.3f} "
        f"TFLOP/s ({peak['kernel']}; torch.matmul {peak['matmul_flops_per_s'] / 1e12:.3f}, "
        f"1x1 convolution {peak['conv1x1_flops_per_s'] / 1e12:.3f})")
    t = time.perf_counter()
    sd, dino = build_components(opts.configs, "cpu")
    result["model_build_seconds"] = time.perf_counter() - t
    models = _Models(sd, dino, device, dtype)
    say(f"models built in {result['model_build_seconds']:.1f} s")

    extraction: dict[str, Any] = {}
    tile_record: dict[int, dict[str, Any]] = {}
    for name, given in opts.presets.items():
        cfg = _cfg(name, given)
        say(f"preset {name}")
        n = opts.images or opts.batch_size or 1
        imgs = [synthetic_image(opts.image_hw, 100 + i) for i in range(n)]
        reps = (opts.reps or {}).get(name, 1)
        eng = _bench_engine(models, cfg, imgs, opts.batch_size or 1, reps, device, say,
                            opts.compile)
        bimgs = [synthetic_image(opts.image_hw, 200 + i) for i in range(opts.baseline_images)]
        base = _bench_baseline(models, cfg, bimgs, opts.baseline_tiles, device, say, tile_record)
        one_off = result["model_build_seconds"] + eng["warmup_seconds"]
        entry = {"config": {"sd_size": cfg.sd_size, "sd_tiles": len(cfg.sd_tile_offsets) ** 2,
                            "dino_size": cfg.dino_size, "grid": cfg.grid},
                 "engine": eng, "baseline": base,
                 "speedup": base["seconds_per_image"] / eng["seconds_per_image"],
                 # projection for ``targets`` images: one-off (model build + first-call warm-up)
                 # plus the steady state per image
                 "one_off_seconds": one_off, "projected_images": opts.targets,
                 "projected_seconds": one_off + opts.targets * eng["seconds_per_image"]}
        for part in (eng, base):
            if part["achieved_flops_per_s"]:
                part["fraction_of_peak"] = part["achieved_flops_per_s"] / peak["flops_per_s"]
        extraction[name] = entry
        say(f"  {name}: engine {eng['seconds_per_image']:.3f} s/image steady (first call "
            f"{eng['first_call_seconds']:.3f} s), baseline {base['seconds_per_image']:.3f} "
            f"s/image, x{entry['speedup']:.2f}")
    result["extraction"] = extraction

    # the SD ablations and the precision check run on the first preset, without an adapter
    # (the diy preset's DINOv2 part is the same network)
    first = _cfg(*next(iter(opts.presets.items()))).replace(adapter="")
    if not first.uses_sd:
        first = first.replace(fusion="copca")
    if opts.ablations:
        say("ablations (one SD tile)")
        result["ablations"] = _ablations(models, first, device, say,
                                         batched_tiles=device.startswith("cuda") or not opts.quick)
    if opts.precision_check and dtype != torch.float32:
        say("precision check")
        result["precision"] = _precision(models, first, device, say)

    say("transfer")
    tcfg = opts.presets.get(opts.transfer_preset) or preset(opts.transfer_preset)
    if not tcfg.uses_sd:  # the transfer part times the SD fusions on synthetic maps
        tcfg = tcfg.replace(fusion="copca", adapter="")
    result["transfer"] = _bench_transfer(tcfg, opts, say)
    del models, sd, dino

    if opts.gui is not None:
        say("gui")
        try:
            result["gui"] = opts.gui(say)
        except Exception as exc:  # the GUI part is optional: report, never fail the run
            log.exception("GUI benchmark failed")
            result["gui"] = {"skipped": f"failed: {exc}"}
    else:
        result["gui"] = {"skipped": "no GUI benchmark given"}
    result["total_seconds"] = time.perf_counter() - t_start
    return result


# ---- output --------------------------------------------------------------------------------
def _fmt(x: float | None, unit: str = "", digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def format_table(res: dict[str, Any]) -> str:
    """Human-readable summary of a ``run_bench`` result."""
    m = res["machine"]
    peak = res["peak"]["flops_per_s"]
    lines = [f"annotator bench  {res['date']}  device {m['device']} ({m['device_name']}), "
             f"engine dtype {res['dtype']}, {m.get('cpu_count')} CPU(s)",
             f"matmul peak: {peak / 1e12:.3f} TFLOP/s ({res['peak']['dtype']})", "",
             f"{'preset':<8}{'engine s/img':>13}{'base s/img':>12}{'ratio':>8}"
             f"{'eng TFLOP/img':>15}{'eng TFLOP/s':>13}{'% peak':>8}{'base %pk':>9}"
             f"{'peak mem GB':>12}"]
    for name, e in res["extraction"].items():
        eng, base = e["engine"], e["baseline"]
        proj = (f"; {e['projected_images']} images: {e['projected_seconds']:.0f} s = one-off "
                f"{e['one_off_seconds']:.1f} s (model build {res['model_build_seconds']:.1f} s "
                f"+ first-call warm-up {eng['warmup_seconds']:.1f} s) + "
                f"{e['projected_images']} x {eng['seconds_per_image']:.3f} s"
                if "one_off_seconds" in e else "")
        lines.append(
            f"{name:<8}{eng['seconds_per_image']:>13.3f}{base['seconds_per_image']:>12.3f}"
            f"{e['speedup']:>7.2f}x{_fmt(_tflops(eng['flops_per_image'])):>15}"
            f"{_fmt(_tflops(eng['achieved_flops_per_s'])):>13}"
            f"{_fmt(100 * eng.get('fraction_of_peak', 0) or None, '', 1):>8}"
            f"{_fmt(100 * base.get('fraction_of_peak', 0) or None, '', 1):>9}"
            f"{eng['memory']['peak_bytes'] / 1e9:>12.2f}")
        if "first_call_seconds" in eng:
            lines.append(f"{'':<8}engine: steady state {eng['seconds_per_image']:.3f} s/image, "
                         f"first call {eng['first_call_seconds'] / max(1, eng['images']):.3f} "
                         f"s/image{proj}")
        if base.get("extrapolated"):
            src = (f"; per-tile figures from the {base['tile_figures_from']} run, same tile"
                   if base.get("tile_figures_from") else "")
            lines.append(f"{'':<8}(baseline: {base['tiles_measured']} of {base['tiles']} "
                         f"tiles measured, the rest extrapolated{src})")
        st = base.get("stages_seconds") or {}
        if st:
            lines.append(f"{'':<8}baseline stages: " + ", ".join(
                f"{k} {v:.2f} s" for k, v in st.items()))
    ab = res.get("ablations")
    if ab:
        lines += ["", f"ablations on one {ab['tile']} px tile (s): " + ", ".join(
            f"{k[:-2]} {v:.3f}" for k, v in ab.items() if k.endswith("_s"))]
    pr = res.get("precision")
    if pr:
        lines += ["", f"{pr['dtype']} vs fp32: max descriptor deviation "
                      f"{pr['max_abs_dev_fused_descriptor']:.4f}, keypoints max "
                      f"{_fmt(pr['max_keypoint_dev_px'], ' px', 2)}, "
                      f"{pr['keypoints_moved_over_1px']} of {pr['keypoints_compared']} "
                      f"moved > 1 px"]
    tr = res.get("transfer")
    if tr:
        lines += ["", f"transfer ({tr['preset']} preset), {tr['keypoints']} keypoints, "
                      f"cache {tr['cache_bytes_per_image'] / 1e6:.1f} MB/image:"]
        lines.append(f"  {'case':<16}{'from':<8}{'steady ms/target':>17}{'cpu ms':>8}"
                     f"{'one-off s':>10}{'measured':>9}   projection")
        for fusion_name, res_f in tr.get("fusions", {}).items():
            for where, d in res_f.items():
                if "seconds_per_target" not in d:
                    lines.append(f"  {fusion_name:<16}{where:<8}{'no figure':>17}   "
                                 f"({'; '.join(d.get('refused', []))})")
                    continue
                lines.append(
                    f"  {fusion_name:<16}{where:<8}{d['seconds_per_target'] * 1000:>17.1f}"
                    f"{d.get('cpu_seconds_per_target', float('nan')) * 1000:>8.1f}"
                    f"{d.get('one_off_seconds', 0.0):>10.2f}{d['targets_measured']:>9}   "
                    f"{tr['projected_targets']} targets: {d['projected_seconds']:.1f} s")
        lines.append(f"  matching alone: vectorised "
                     f"{tr['match_vectorised_seconds_per_target'] * 1000:.1f} ms/target, "
                     f"per-cell loop {tr['match_loop_seconds_per_target']:.2f} s/target "
                     f"(x{_fmt(tr['match_speedup'], '', 0)})")
    gui = res.get("gui") or {}
    lines.append("")
    if "skipped" in gui:
        lines.append(f"GUI: skipped ({gui['skipped']})")
    else:
        lines.append("GUI: " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in gui.items()))
    lines.append(f"total {res['total_seconds']:.0f} s")
    return "\n".join(lines)


def write_json(res: dict[str, Any], path: str | Path) -> Path:
    import json

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(res, indent=2, default=str))
    return p
