"""Load SD 1.5 components (diffusers) and DINOv2 (transformers) from a hub id or a local folder.

Safetensors only. Hub ids go through ``huggingface_hub.snapshot_download`` restricted to the files
the engine uses (``SD_ALLOW_PATTERNS`` / ``DINO_ALLOW_PATTERNS``), so the standard HF cache,
``cache_dir``, ``revision`` and offline mode (``local_files_only``) are honoured. Every failure
becomes ``ModelLoadError`` with what was looked for, where, and how to fix it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotator.features.config import ModelSource

log = logging.getLogger(__name__)

SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def sd_allow_patterns(fp16: bool) -> list[str]:
    """Files of an SD 1.5 diffusers repository the engine needs (fp16 variant or full)."""
    v = ".fp16" if fp16 else ""
    return [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/*",
        "text_encoder/config.json", f"text_encoder/model{v}.safetensors",
        "unet/config.json", f"unet/diffusion_pytorch_model{v}.safetensors",
        "vae/config.json", f"vae/diffusion_pytorch_model{v}.safetensors",
    ]


DINO_ALLOW_PATTERNS = ["config.json", "model.safetensors"]


class ModelLoadError(RuntimeError):
    """Weights could not be loaded; the message says what, where and how to fix it."""


@dataclass
class SDComponents:
    """Loaded SD 1.5 parts (eval mode, on ``device`` in ``dtype``); no VAE decoder is used."""

    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    source: str


@dataclass
class DinoComponents:
    model: Any
    source: str


def _looks_like_path(name: str) -> bool:
    return (name.startswith((".", "~", "/")) or "\\" in name or name.count("/") > 1
            or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"))


def _fix_hint(env: str, repo: str, patterns: list[str]) -> str:
    inc = " ".join(f'"{p}"' for p in patterns)
    return (f"Fix: set the model id or a local folder in Settings or the {env} environment "
            f"variable; or run once with internet access; or download the files with\n"
            f"  huggingface-cli download {repo} --include {inc}")


DownloadProgress = Callable[[str, int, int], None]
"""Called as ``progress(what, files_done, files_total)`` while weights download."""


def _reporting_tqdm(progress: DownloadProgress, what: str) -> type:
    """A tqdm class for ``snapshot_download`` that forwards its file count to ``progress``."""
    from tqdm.auto import tqdm

    class ReportingTqdm(tqdm):  # type: ignore[misc, valid-type]
        # counts itself: a disabled bar (HF_HUB_DISABLE_PROGRESS_BARS) does not track n
        _done = 0

        def update(self, n: float | None = 1) -> bool | None:
            out = super().update(n)
            self._done += int(n or 0)
            progress(what, self._done, int(self.total or 0))
            return out

    return ReportingTqdm


def _snapshot(repo: str, revision: str | None, source: ModelSource, patterns: list[str],
              env: str, what: str, progress: DownloadProgress | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = source.cache_dir or "the Hugging Face cache (HF_HOME / HF_HUB_CACHE)"
    try:
        extra = {"tqdm_class": _reporting_tqdm(progress, what)} if progress else {}
        return Path(snapshot_download(repo, revision=revision, cache_dir=source.cache_dir,
                                      local_files_only=source.local_files_only,
                                      allow_patterns=patterns, **extra))
    except LocalEntryNotFoundError as exc:
        mode = "offline mode (HF_HUB_OFFLINE / local files only)" if source.local_files_only \
            else "no network"
        raise ModelLoadError(
            f"{what} weights '{repo}' (revision {revision or 'main'}) are not in {where} and "
            f"cannot be downloaded ({mode}).\n{_fix_hint(env, repo, patterns)}") from exc
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError,
            HFValidationError) as exc:
        raise ModelLoadError(
            f"{what} model '{repo}' (revision {revision or 'main'}) was not found or is not "
            f"accessible on the Hugging Face Hub: {exc}.\n{_fix_hint(env, repo, patterns)}"
        ) from exc
    except OSError as exc:  # network errors, disk errors
        raise ModelLoadError(
            f"could not fetch {what} weights '{repo}' into {where}: {exc}.\n"
            f"{_fix_hint(env, repo, patterns)}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _local_folder(name: str, label: str, fix: str) -> Path | None:
    """The local folder ``name`` names, None for a hub id; a path that does not exist raises
    ModelLoadError ("{label} folder '...' does not exist. Fix: set an existing folder or a hub
    id {fix}.")."""
    if os.path.isdir(os.path.expanduser(name)):
        return Path(os.path.expanduser(name))
    if _looks_like_path(name):
        raise ModelLoadError(f"{label} folder '{name}' does not exist. Fix: set an existing "
                             f"folder or a hub id {fix}.")
    return None


def _transformers_model_type(folder: Path, name: str, expected: tuple[str, ...], what: str,
                             fix: str) -> str:
    """The model_type of a transformers model folder that holds safetensors weights; raises
    ModelLoadError naming what was found instead."""
    cfg = folder / "config.json"
    model_type = _read_json(cfg).get("model_type") if cfg.is_file() else None
    if model_type not in expected:
        found = ("a diffusers pipeline (model_index.json)" if (folder / "model_index.json").exists()
                 else f"model_type {model_type!r}" if cfg.is_file() else "no config.json")
        raise ModelLoadError(f"'{name}' ({folder}) is not {what}: found {found}, expected "
                             f"{' or '.join(expected)}. Fix: {fix}")
    if not any(folder.glob("*.safetensors")):
        raise ModelLoadError(f"'{name}' ({folder}) has no .safetensors weights (only safetensors "
                             f"are loaded). Fix: download model.safetensors of the model.")
    return str(model_type)


def _check_sd_folder(folder: Path, name: str) -> None:
    missing = [s for s in SD_SUBFOLDERS if not (folder / s).is_dir()]
    if missing:
        kind = ""
        if (folder / "config.json").is_file():
            mt = _read_json(folder / "config.json").get("model_type")
            kind = f" (it holds a single '{mt or 'unknown'}' model, not an SD pipeline)"
        raise ModelLoadError(
            f"'{name}' ({folder}) is not a Stable Diffusion 1.5 diffusers folder{kind}: missing "
            f"subfolder(s) {', '.join(missing)}. Expected unet/, vae/, text_encoder/, tokenizer/ "
            f"and scheduler/. Fix: point the SD model setting (or ANNOTATOR_SD_MODEL) at a "
            f"diffusers SD 1.5 folder or hub id such as stable-diffusion-v1-5/"
            f"stable-diffusion-v1-5.")
    expected = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}
    for sub, cls in expected.items():
        got = _read_json(folder / sub / "config.json").get("_class_name")
        if got != cls:
            raise ModelLoadError(
                f"'{name}': {folder / sub / 'config.json'} declares class {got!r}, expected "
                f"{cls!r}. Fix: point the SD model setting at an SD 1.5 diffusers folder.")
    if not any(any((folder / sub).glob("*.safetensors"))
               for sub in ("unet", "vae", "text_encoder")):
        raise ModelLoadError(
            f"'{name}' ({folder}) has no .safetensors weights (only safetensors are loaded). "
            f"Fix: download the safetensors files of the model.")


def _from_pretrained(cls: Any, folder: Path, what: str, torch_dtype: Any, half: bool,
                     **kw: Any) -> Any:
    """Load with the fp16 variant first when ``half``, falling back to the plain weights."""
    variants = ["fp16", None] if half else [None]
    last: Exception | None = None
    for variant in variants:
        try:
            return cls.from_pretrained(str(folder), torch_dtype=torch_dtype, use_safetensors=True,
                                       local_files_only=True, variant=variant, **kw)
        except (OSError, ValueError) as exc:
            last = exc
    raise ModelLoadError(f"could not load {what} from {folder}: {last}. Fix: make sure the folder "
                         f"holds the safetensors weights and config of that component.") from last


def _check_unet_layout(unet: Any, name: str) -> None:
    ups = [type(b).__name__ for b in unet.up_blocks]
    want = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    if ups != want:
        raise ModelLoadError(f"'{name}': UNet up blocks are {ups}, expected the SD 1.5 layout "
                             f"{want} (hooks s5/s4/s3 need it).")


def load_sd(source: ModelSource, device: str, dtype: Any,
            progress: DownloadProgress | None = None) -> SDComponents:
    """Load the SD 1.5 VAE (encoder only used), UNet, CLIP text encoder, tokenizer and scheduler.

    ``progress`` hears about downloads. Raises ModelLoadError on any failure.
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    name = source.sd_model
    half = dtype in (torch.float16,)
    folder = _local_folder(name, "SD model", "(default stable-diffusion-v1-5/"
                           "stable-diffusion-v1-5) in Settings or ANNOTATOR_SD_MODEL")
    if folder is None:
        if half:
            try:
                folder = _snapshot(name, source.sd_revision, source, sd_allow_patterns(True),
                                   "ANNOTATOR_SD_MODEL", "Stable Diffusion", progress)
                if not (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file():
                    folder = None
            except ModelLoadError:
                folder = None
        if folder is None:
            folder = _snapshot(name, source.sd_revision, source, sd_allow_patterns(False),
                               "ANNOTATOR_SD_MODEL", "Stable Diffusion", progress)
    _check_sd_folder(folder, name)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer",
                                                  local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(str(folder), subfolder="scheduler",
                                                  local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the tokenizer/scheduler of '{name}' from {folder}: "
                             f"{exc}") from exc
    vae = _from_pretrained(AutoencoderKL, folder, "the SD VAE", dtype, half, subfolder="vae")
    unet = _from_pretrained(UNet2DConditionModel, folder, "the SD UNet", dtype, half,
                            subfolder="unet")
    _check_unet_layout(unet, name)
    if source.sd_unet:
        load_unet_weights(unet, source.sd_unet, source, progress)
    text = _from_pretrained(CLIPTextModel, folder, "the CLIP text encoder", dtype, half,
                            subfolder="text_encoder")
    for m in (vae, unet, text):
        m.to(device=device).eval().requires_grad_(False)
    log.info("loaded Stable Diffusion from %s on %s (%s)", folder, device, dtype)
    where = str(folder) + (f" + UNet {source.sd_unet}" if source.sd_unet else "")
    return SDComponents(vae, unet, text, tokenizer, scheduler, source=where)


def resolve_unet_file(spec: str, source: ModelSource,
                      progress: DownloadProgress | None = None) -> Path:
    """A local .safetensors file, or "owner/repo/path/file.safetensors" fetched through the
    Hugging Face cache (e.g. CompVis/cleandift/cleandift_sd15_unet.safetensors)."""
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        return path
    parts = spec.split("/")
    if spec.startswith((".", "~", "/")) or "\\" in spec or os.path.isabs(spec):
        raise ModelLoadError(f"SD UNet file '{spec}' does not exist. Fix: give an existing "
                             f".safetensors file or owner/repo/file.safetensors on the hub.")
    if len(parts) < 3 or not spec.endswith(".safetensors"):
        raise ModelLoadError(
            f"SD UNet '{spec}' is neither a local file nor owner/repo/file.safetensors (for "
            f"CleanDIFT: CompVis/cleandift/cleandift_sd15_unet.safetensors).")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    folder = _snapshot(repo, None, source, [filename], "ANNOTATOR_SD_UNET", "SD UNet", progress)
    file = folder / filename
    if not file.is_file():
        raise ModelLoadError(f"'{repo}' has no file '{filename}'.")
    return file


def load_unet_weights(unet: Any, spec: str, source: ModelSource,
                      progress: DownloadProgress | None = None) -> None:
    """Replace ``unet``'s weights by the safetensors state dict ``spec`` (strict: every key and
    shape must match the SD 1.5 UNet). Raises ModelLoadError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = resolve_unet_file(spec, source, progress)
    try:
        state = load_file(str(file))
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(f"cannot read the SD UNet weights {file}: {exc}") from exc
    ref = unet.state_dict()
    missing, extra = sorted(set(ref) - set(state)), sorted(set(state) - set(ref))
    bad = sorted(k for k in set(ref) & set(state) if tuple(ref[k].shape) != tuple(state[k].shape))
    if missing or extra or bad:
        raise ModelLoadError(
            f"SD UNet weights {file} do not fit the SD 1.5 UNet: {len(missing)} missing key(s) "
            f"{missing[:3]}, {len(extra)} unexpected {extra[:3]}, {len(bad)} shape mismatch(es) "
            f"{bad[:3]}. Fix: use an SD 1.5 UNet state dict (CleanDIFT: "
            f"cleandift_sd15_unet.safetensors, not the SD 2.1 one).")
    dtype = next(iter(ref.values())).dtype
    unet.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    log.info("loaded UNet weights from %s", file)


def load_dino(source: ModelSource, device: str, dtype: Any,
              progress: DownloadProgress | None = None) -> DinoComponents:
    """Load a transformers Dinov2Model (``progress`` hears about downloads). Raises
    ModelLoadError on any failure."""
    from transformers import Dinov2Model

    name = source.dino_model
    folder = _local_folder(name, "DINOv2 model", "(default facebook/dinov2-base) in Settings or "
                           "ANNOTATOR_DINO_MODEL") or _snapshot(
        name, source.dino_revision, source, DINO_ALLOW_PATTERNS, "ANNOTATOR_DINO_MODEL",
        "DINOv2", progress)
    model_type = _transformers_model_type(
        folder, name, ("dinov2", "dinov2_with_registers"), "a DINOv2 model folder",
        "point the DINOv2 setting (or ANNOTATOR_DINO_MODEL) at facebook/dinov2-base or a "
        "folder saved from it.")
    if model_type == "dinov2_with_registers":
        from transformers import Dinov2WithRegistersModel as cls
    else:
        cls = Dinov2Model
    try:
        model = cls.from_pretrained(str(folder), torch_dtype=dtype, use_safetensors=True,
                                    local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load DINOv2 from {folder}: {exc}") from exc
    model.to(device=device).eval().requires_grad_(False)
    log.info("loaded DINOv2 from %s on %s (%s)", folder, device, dtype)
    return DinoComponents(model, source=str(folder))
