"""Feature-extraction, model-source and runtime configuration (no torch import here).

Presets
-------
``PAPER``: DESIGN.md section 3 exactly (SD at 960 as 2 x 2 tiles of 512, DINOv2-B at 840, 60 grid).
About 6.9 TFLOP per image (4 x (VAE 1.08 + early-stopped UNet 0.48) + DINOv2 0.61): about a
minute per image on the project's 2-core CPU, milliseconds on a datacenter GPU.

``FAST``: one 512 SD pass (no tiling) and DINOv2 at 448, 32 grid. About 1.7 TFLOP per image
(VAE 1.08 + UNet 0.48 + DINOv2 ~0.17): about 4x cheaper than PAPER, ~15 s on the same CPU,
with a coarser (16 px at 512) grid.

``GEOAWARE``: GeoAware-SC zero-shot (DESIGN.md section 9): the PAPER geometry at t = 50 with FreeU
applied as GeoAware's feature code does, "concat" fusion, 11 x 11 window soft-argmax and adaptive
pose alignment (flipped reference, partner-mirrored queries, mutual-nearest-neighbour score).
Same cost as PAPER (FreeU's FFTs are negligible).

``DIY``: DIY-SC's DINOv2-only adapter (DESIGN.md section 9): DINOv2-B at 840, the CC0 bottleneck
adapter on the 60 x 60 map, L2 per cell, 15 x 15 window soft-argmax, no flip. About 0.61 TFLOP
per image (DINOv2 0.61 + adapter ~0.005): about 11x cheaper than PAPER.

``with_clean_unet``: the CleanDIFT UNet settings for the SD presets (no noise, t = 261, FreeU off,
prompt "a photo of a {category}").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

FUSIONS = ("copca", "concat", "dino", "sd")
ADAPTERS = ("", "diy-sc")
FLIP_CRITERIA = ("cycle", "mutual_nn")
CLEAN_UNET_TIMESTEP = 261
CLEAN_UNET_PROMPT = "a photo of a {category}"
SD_LAYERS = ("s5", "s4", "s3")
DTYPES = ("fp32", "fp16", "bf16")

DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_DINO_MODEL = "facebook/dinov2-base"

# Fields of FeatureConfig that do not change the raw per-layer maps (matching/fusion only).
_MATCH_ONLY_FIELDS = ("preset", "fusion", "pca_dim", "softargmax_window", "softargmax_temperature",
                      "flip", "flip_criterion")


@dataclass(frozen=True)
class FeatureConfig:
    """Every parameter of the feature pipeline (DESIGN.md section 3).

    The SD canvas (``sd_size``) is covered by square tiles of ``sd_tile`` placed at every
    (y, x) pair of ``sd_tile_offsets``. The fused grid is ``grid`` x ``grid`` cells covering the
    reference canvas (the DINOv2 canvas ``dino_size`` when DINOv2 is used, else the SD canvas).
    """

    preset: str = "paper"
    sd_size: int = 960
    sd_tile: int = 512
    sd_tile_offsets: tuple[int, ...] = (0, 448)
    timestep: int = 100
    prompt: str = ""
    seed: int = 42
    sd_layers: tuple[str, ...] = SD_LAYERS
    dino_size: int = 840
    dino_patch: int = 14
    dino_layer: int = 12
    grid: int = 60
    fusion: str = "copca"
    pca_dim: int = 256
    softargmax_window: int = 11
    softargmax_temperature: float = 0.02
    flip: bool = False
    #: how the flipped reference wins: "cycle" (mean cycle error of the flipped keypoints) or
    #: "mutual_nn" (GeoAware's mean distance of mutual nearest neighbours over all cells)
    flip_criterion: str = "cycle"
    #: FreeU inside the SD pass as GeoAware-SC applies it (annotator.features.sd_dino)
    freeu: bool = False
    #: add the fixed noise at ``timestep`` (False: the clean latent, as CleanDIFT uses it)
    add_noise: bool = True
    #: adapter applied to the raw DINOv2 map ("diy-sc": DIY-SC's bottleneck, section 9)
    adapter: str = ""

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.flip_criterion not in FLIP_CRITERIA:
            raise ValueError(f"flip_criterion must be one of {FLIP_CRITERIA}, got "
                             f"{self.flip_criterion!r}")
        if self.adapter not in ADAPTERS:
            raise ValueError(f"adapter must be one of {ADAPTERS}, got {self.adapter!r}")
        if not self.sd_layers or any(name not in SD_LAYERS for name in self.sd_layers):
            raise ValueError(f"sd_layers must be a non-empty subset of {SD_LAYERS}")
        if not self.sd_tile_offsets or min(self.sd_tile_offsets) != 0:
            raise ValueError("sd_tile_offsets must be non-empty and start at 0")
        if max(self.sd_tile_offsets) + self.sd_tile != self.sd_size:
            raise ValueError(
                f"tiles of {self.sd_tile} at offsets {self.sd_tile_offsets} must end exactly at "
                f"sd_size={self.sd_size}")
        if any(o % 64 for o in self.sd_tile_offsets):
            raise ValueError(
                f"sd_tile_offsets {self.sd_tile_offsets} must be multiples of 64 (the s5 stride), "
                "so that tile feature maps line up on the canvas grid")
        offs = sorted(self.sd_tile_offsets)
        if any(b - a > self.sd_tile for a, b in zip(offs, offs[1:])):
            raise ValueError("sd tiles leave gaps: consecutive offsets differ by more than a tile")
        if self.sd_tile % 64:
            raise ValueError(f"sd_tile must be a multiple of 64, got {self.sd_tile}")
        if self.dino_size % self.dino_patch:
            raise ValueError(f"dino_size {self.dino_size} is not a multiple of {self.dino_patch}")
        if self.uses_dino and self.dino_size // self.dino_patch != self.grid:
            raise ValueError(
                f"dino_size/dino_patch = {self.dino_size // self.dino_patch} must equal grid "
                f"{self.grid}")
        if not 0 <= self.timestep < 1000:
            raise ValueError(f"timestep must be in [0, 1000), got {self.timestep}")
        if self.pca_dim < 1 or self.grid < 1 or self.dino_layer < 0:
            raise ValueError("pca_dim and grid must be >= 1 and dino_layer >= 0")
        if self.softargmax_window < 0 or self.softargmax_temperature <= 0:
            raise ValueError("softargmax_window must be >= 0 and softargmax_temperature > 0")

    @property
    def uses_sd(self) -> bool:
        return self.fusion != "dino"

    @property
    def uses_dino(self) -> bool:
        return self.fusion != "sd"

    @property
    def canvas_size(self) -> int:
        """Size S of the canvas the descriptor grid covers."""
        return self.dino_size if self.uses_dino else self.sd_size

    @property
    def cell_size(self) -> float:
        """Canvas pixels per grid cell (14 for the paper preset)."""
        return self.canvas_size / self.grid

    def replace(self, **changes: object) -> FeatureConfig:
        return dataclasses.replace(self, **changes)

    def feature_fields(self) -> dict[str, object]:
        """Fields that change the raw per-layer maps (used in cache keys)."""
        d = dataclasses.asdict(self)
        for name in _MATCH_ONLY_FIELDS:
            d.pop(name)
        d["uses_sd"] = self.uses_sd
        d["uses_dino"] = self.uses_dino
        if not self.uses_sd:
            for name in ("sd_size", "sd_tile", "sd_tile_offsets", "timestep", "prompt", "seed",
                         "sd_layers", "freeu", "add_noise"):
                d.pop(name)
        if not self.uses_dino:
            for name in ("dino_size", "dino_patch", "dino_layer", "adapter"):
                d.pop(name)
        # settings added after the first release stay out of the key at their defaults, so
        # existing caches keep their keys
        for name, default in (("freeu", False), ("add_noise", True), ("adapter", "")):
            if d.get(name, default) == default:
                d.pop(name, None)
        return d

    def prompt_for(self, category: str) -> str:
        """``prompt`` with ``{category}`` replaced (an empty category gives "object")."""
        if "{category}" not in self.prompt:
            return self.prompt
        return self.prompt.replace("{category}", category.strip() or "object")


PAPER = FeatureConfig()
FAST = FeatureConfig(preset="fast", sd_size=512, sd_tile=512, sd_tile_offsets=(0,),
                     dino_size=448, grid=32)
GEOAWARE = FeatureConfig(preset="geoaware", timestep=50, freeu=True, fusion="concat",
                         softargmax_window=11, softargmax_temperature=0.02, flip=True,
                         flip_criterion="mutual_nn")
DIY = FeatureConfig(preset="diy", fusion="dino", adapter="diy-sc", softargmax_window=15,
                    softargmax_temperature=0.02, flip=False)
PRESETS: dict[str, FeatureConfig] = {"paper": PAPER, "fast": FAST, "geoaware": GEOAWARE,
                                     "diy": DIY}


def with_clean_unet(config: FeatureConfig) -> FeatureConfig:
    """The settings for a CleanDIFT UNet (DESIGN.md section 9): the clean latent (no noise) at
    t = 261, FreeU off, prompt "a photo of a {category}" (a prompt already set is kept)."""
    return config.replace(add_noise=False, timestep=CLEAN_UNET_TIMESTEP, freeu=False,
                          prompt=config.prompt or CLEAN_UNET_PROMPT)


def preset(name: str, **overrides: object) -> FeatureConfig:
    """Return the named preset (paper, fast, geoaware, diy) with optional field overrides."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return base.replace(**overrides) if overrides else base


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: hub ids or local folders (safetensors only)."""

    sd_model: str = DEFAULT_SD_MODEL
    dino_model: str = DEFAULT_DINO_MODEL
    sd_revision: str | None = None
    dino_revision: str | None = None
    local_files_only: bool = False
    cache_dir: str | None = None
    #: a UNet state dict replacing SD 1.5's (CleanDIFT): a local .safetensors file or
    #: "owner/repo/file.safetensors" on the Hugging Face hub; None: the SD model's own UNet
    sd_unet: str | None = None
    #: local DIY-SC adapter checkpoint (offline machines); None: download on first use
    adapter_checkpoint: str | None = None

    @classmethod
    def from_env(cls, **overrides: object) -> ModelSource:
        """Defaults overridden by ANNOTATOR_SD_MODEL, ANNOTATOR_DINO_MODEL, ANNOTATOR_SD_UNET,
        ANNOTATOR_DIY_CHECKPOINT, HF_HUB_OFFLINE, then by explicit ``overrides`` (None values
        are ignored)."""
        kw: dict[str, object] = {}
        if os.environ.get("ANNOTATOR_SD_MODEL"):
            kw["sd_model"] = os.environ["ANNOTATOR_SD_MODEL"]
        if os.environ.get("ANNOTATOR_DINO_MODEL"):
            kw["dino_model"] = os.environ["ANNOTATOR_DINO_MODEL"]
        if os.environ.get("ANNOTATOR_SD_UNET"):
            kw["sd_unet"] = os.environ["ANNOTATOR_SD_UNET"]
        if os.environ.get("ANNOTATOR_DIY_CHECKPOINT"):
            kw["adapter_checkpoint"] = os.environ["ANNOTATOR_DIY_CHECKPOINT"]
        if _env_flag(os.environ.get("HF_HUB_OFFLINE")):
            kw["local_files_only"] = True
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RuntimeConfig:
    """Device ("auto", "cpu", "cuda", "cuda:N", "mps"), dtype ("fp32", "fp16", "bf16") and the
    number of images per forward pass. fp16 on CPU is rejected by ``resolve_dtype``."""

    device: str = "auto"
    dtype: str = "fp32"
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or
                (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {dev!r}")


def resolve_device(name: str = "auto") -> str:
    """Concrete torch device string: ``auto`` picks cuda, then mps, then cpu.

    Raises ValueError when a forced device is not available.
    """
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return name
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' requested but MPS is not available")
        return name
    if name == "cpu":
        return name
    raise ValueError(f"unknown device {name!r}")


def resolve_dtype(name: str, device: str):  # -> torch.dtype
    """torch dtype for ``name`` on ``device``; fp16 on CPU raises ValueError (use fp32 or bf16)."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    if name == "fp16" and device == "cpu":
        raise ValueError("dtype fp16 is not supported on the CPU; choose fp32 (or bf16)")
    return table[name]


def fingerprint(extractor_name: str, parts: dict[str, object]) -> str:
    """Stable short hash of everything that changes the features (for cache keys)."""
    blob = json.dumps({"extractor": extractor_name, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def weights_stamp(name: str, revision: str | None, cache_dir: str | None) -> str:
    """What identifies the weights behind ``name`` without loading them: for a local folder
    the size and modification time of its safetensors files; for a hub id the commit that
    the Hugging Face cache resolves the revision to ("unresolved" before the download)."""
    folder = Path(os.path.expanduser(name))
    if folder.is_dir():
        files = sorted(folder.rglob("*.safetensors"))
        stats = []
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            stats.append(f"{f.relative_to(folder).as_posix()}:{st.st_size}:{st.st_mtime_ns}")
        return hashlib.sha256("|".join(stats).encode()).hexdigest()[:16]
    rev = revision or "main"
    if len(rev) == 40 and all(c in "0123456789abcdef" for c in rev):
        return rev  # already a commit
    from huggingface_hub import constants

    hub = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    ref = hub / ("models--" + name.replace("/", "--")) / "refs" / rev
    try:
        return ref.read_text().strip()
    except OSError:
        return "unresolved"


def sd_dino_fingerprint(config: FeatureConfig, source: ModelSource, dtype: str) -> str:
    """Fingerprint of the SD+DINOv2 extractor, computable without loading any model: the
    feature settings, the precision, the model ids and the weights they resolve to."""
    parts: dict[str, object] = {"config": config.feature_fields(), "dtype": dtype}
    if config.uses_sd:
        parts["sd"] = [source.sd_model, source.sd_revision,
                       weights_stamp(source.sd_model, source.sd_revision, source.cache_dir)]
        if source.sd_unet:
            parts["sd_unet"] = [source.sd_unet, file_stamp(source.sd_unet, source.cache_dir)]
    if config.uses_dino:
        parts["dino"] = [source.dino_model, source.dino_revision,
                         weights_stamp(source.dino_model, source.dino_revision, source.cache_dir)]
        if config.adapter == "diy-sc":
            # the checkpoint is pinned by its sha256 (checked on load), wherever it comes from
            parts["adapter"] = ["diy-sc", DIY_SC_SHA256]
    return fingerprint("sd_dino", parts)


#: DIY-SC DINOv2 adapter checkpoint 0300_dino_spair (CC0), pinned by content
DIY_SC_SHA256 = "42e9c8a4d27041af7bb8dc5240ea3e83d47e013b72541dc8c5829368f247e705"
DIY_SC_URL = ("https://github.com/odunkel/DIY-SC/raw/e1121c072b022adcccaf1b938dcc053fb9eed930/"
              "ckpts/0300_dino_spair/best.pth")


def file_stamp(name: str, cache_dir: str | None = None) -> str:
    """What identifies a single weights file without reading it: size and modification time
    of a local file; for "owner/repo/file" on the hub the commit the Hugging Face cache
    resolves main to ("unresolved" before the download)."""
    path = Path(os.path.expanduser(name))
    if path.is_file():
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    repo = "/".join(name.split("/")[:2])
    return "hub:" + weights_stamp(repo, None, cache_dir)


