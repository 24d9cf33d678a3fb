"""Headless correspondence engine: features (through the cache) and keypoint transfer.

Importing this module does not import torch; models load lazily on first use, once.

    engine = Engine.from_pretrained(sd_model="path/or/hub-id", dino_model="facebook/dinov2-base",
                                    preset="paper", device="auto", dtype="fp32")
    result = engine.transfer(ref_rgb, ref_points_xy, target_rgb)   # TransferResult
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from annotator.features.config import (
    FeatureConfig,
    ModelSource,
    RuntimeConfig,
    preset,
    resolve_device,
    sd_dino_fingerprint,
)

if TYPE_CHECKING:
    from annotator.features.cache import CacheStats, FeatureCache
    from annotator.features.crop import ImageCrop
    from annotator.features.extractor import FeatureExtractor, FeatureMaps
    from annotator.matching.transfer import MatchParams, TransferResult

    ImageLike = np.ndarray | ImageCrop

log = logging.getLogger(__name__)

# (image or crop, points (K,2) in its pixels, valid (K,))
Reference = tuple["ImageLike", np.ndarray, np.ndarray | None]


def _pixels(image: Any) -> np.ndarray:
    """The array to featurize: an image, or a crop's pixels (annotator.features.crop)."""
    return image if isinstance(image, np.ndarray) else image.pixels


def _mirrored(image: Any) -> Any:
    if isinstance(image, np.ndarray):
        return np.ascontiguousarray(image[:, ::-1])
    return image.flipped()


def flip_permutation(k: int, flip_pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """(K,) partner index per keypoint from left/right index pairs (itself when unpaired)."""
    perm = np.arange(k)
    for a, b in flip_pairs:
        if not (0 <= a < k and 0 <= b < k):
            raise ValueError(f"flip pair ({a}, {b}) out of range for {k} keypoints")
        perm[a], perm[b] = b, a
    return perm


class OutOfMemory(RuntimeError):
    """Feature extraction ran out of (GPU) memory even at batch size 1."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator out-of-memory error (CUDA, MPS or CPU)."""
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


class Engine:
    """Facade over an extractor, a feature cache and the transfer functions.

    Either give ``extractor`` (any FeatureExtractor, e.g. ContentExtractor) or let the engine
    build the SD + DINOv2 extractor from ``source``, ``config`` and ``runtime`` on first use.
    """

    def __init__(self, source: ModelSource | None = None, config: FeatureConfig | None = None,
                 runtime: RuntimeConfig | None = None, cache: FeatureCache | None = None, *,
                 extractor: FeatureExtractor | None = None, match: MatchParams | None = None,
                 on_download: Callable[[str, int, int], None] | None = None) -> None:
        self.source = source or ModelSource.from_env()
        self.config = config or preset("paper")
        self.runtime = runtime or RuntimeConfig()
        self.cache = cache
        self._match = match
        self._extractor = extractor
        self._plugged = extractor is not None
        #: called as (what, files_done, files_total) while model weights download
        self.on_download = on_download

    @classmethod
    def from_pretrained(cls, sd_model: str | None = None, dino_model: str | None = None,
                        preset: str | FeatureConfig = "paper", device: str = "auto",
                        dtype: str = "fp32", cache_dir: str | None = None,
                        local_files_only: bool | None = None, batch_size: int = 1,
                        feature_cache: FeatureCache | None = None, *,
                        sd_unet: str | None = None, adapter_checkpoint: str | None = None,
                        category: str = "", **config_overrides: Any) -> Engine:
        """Build from hub ids or local folders (None -> env var or default). ``cache_dir`` is
        the Hugging Face cache; ``feature_cache`` the feature cache (None: no caching).
        ``sd_unet`` (a CleanDIFT UNet file) switches to ``with_clean_unet``'s settings;
        ``category`` fills a "{category}" prompt."""
        from annotator.features import config as cfgmod

        source = ModelSource.from_env(sd_model=sd_model, dino_model=dino_model,
                                      cache_dir=cache_dir, local_files_only=local_files_only,
                                      sd_unet=sd_unet or None,
                                      adapter_checkpoint=adapter_checkpoint or None)
        if isinstance(preset, FeatureConfig):
            config = preset.replace(**config_overrides) if config_overrides else preset
        else:
            config = cfgmod.preset(preset, **config_overrides)
        if source.sd_unet and config.uses_sd:
            config = cfgmod.with_clean_unet(config)
        if category:  # else a "{category}" template stays for ``for_category``
            config = config.replace(prompt=config.prompt_for(category))
        return cls(source, config, RuntimeConfig(device, dtype, batch_size), feature_cache)

    # ---- models --------------------------------------------------------------------------
    @property
    def extractor(self) -> FeatureExtractor:
        """The extractor (loads the models on first access; raises ModelLoadError)."""
        if self._extractor is None:
            from annotator.features.config import resolve_dtype
            from annotator.features.models import load_dino, load_sd
            from annotator.features.sd_dino import SDDinoExtractor

            device = resolve_device(self.runtime.device)
            dtype = resolve_dtype(self.runtime.dtype, device.split(":")[0])
            cfg, progress = self.config, self.on_download
            sd = load_sd(self.source, device, dtype, progress) if cfg.uses_sd else None
            dino = load_dino(self.source, device, dtype, progress) if cfg.uses_dino else None
            adapter = None
            if cfg.uses_dino and cfg.adapter == "diy-sc":
                from annotator.features.adapter import AdapterLoadError, load_diy_adapter
                from annotator.features.models import ModelLoadError

                try:
                    adapter = load_diy_adapter(self.source.adapter_checkpoint,
                                               offline=self.source.local_files_only)
                except AdapterLoadError as exc:
                    raise ModelLoadError(str(exc)) from exc
            self._extractor = SDDinoExtractor(sd, dino, self.config, device, dtype,
                                              self.runtime.batch_size, identity=self.fingerprint,
                                              adapter=adapter)
        return self._extractor

    def for_category(self, category: str) -> Engine:
        """This engine with a "{category}" prompt filled in (itself when the prompt has no
        such field, or no SD part). Loads the models once and shares them: only the prompt
        embedding and the cache key differ."""
        cfg = self.config
        if "{category}" not in cfg.prompt or not cfg.uses_sd:
            return self
        return self.with_config(cfg.replace(prompt=cfg.prompt_for(category))) or self

    def with_config(self, config: FeatureConfig) -> Engine | None:
        """An engine with another feature ``config`` (prompt, resolution) that shares this
        one's loaded models, device, dtype, cache and match params (its cache key follows the
        new config). None when the models cannot be shared: a plugged-in extractor, or a
        config needing a model this engine does not have."""
        from annotator.features.sd_dino import SDDinoExtractor

        if self._plugged or (config.uses_sd and not self.config.uses_sd) \
                or (config.uses_dino and not self.config.uses_dino) \
                or config.adapter != self.config.adapter:
            return None
        base = self.extractor
        if not isinstance(base, SDDinoExtractor):
            return None
        engine = Engine(self.source, config, self.runtime, self.cache, match=self._match,
                        on_download=self.on_download)
        engine._extractor = SDDinoExtractor(base.sd, base.dino, config, base.device, base.dtype,
                                            base.batch_size, identity=engine.fingerprint,
                                            adapter=base.adapter)
        return engine

    @property
    def loaded(self) -> bool:
        return self._extractor is not None

    @property
    def fingerprint(self) -> str:
        """Cache-key part; computed without loading any model."""
        if self._plugged and self._extractor is not None:
            return self._extractor.fingerprint
        return sd_dino_fingerprint(self.config, self.source, self.runtime.dtype)

    def release(self) -> None:
        """Drop the loaded models (a plugged-in extractor is kept)."""
        if self._plugged:
            return
        self._extractor = None
        _free_accelerator_memory()

    # ---- features ------------------------------------------------------------------------
    def _extract(self, images: list[np.ndarray]) -> list[FeatureMaps]:
        """Extract; on out-of-memory halve the extractor's batch size and retry, down to 1."""
        extractor = self.extractor
        while True:
            try:
                return extractor.extract(images)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                batch = int(getattr(extractor, "batch_size", 1))
                _free_accelerator_memory()
                if batch <= 1:
                    raise OutOfMemory(
                        "out of memory while extracting features even one image at a time; "
                        "use the fast preset, fp16/bf16 precision, or close other programs "
                        f"using the GPU ({exc})"
                    ) from exc
                extractor.batch_size = batch // 2  # type: ignore[attr-defined]
                log.warning("out of memory at batch size %d: retrying at %d", batch, batch // 2)

    def features_many(self, images: Sequence[ImageLike]) -> list[FeatureMaps]:
        """Raw maps per image or crop (annotator.features.crop.ImageCrop: featurized as an
        image; its cache key adds the crop rectangle), through the cache; misses of one
        kind are extracted together."""
        images = list(images)
        if self.cache is None:
            return self._extract([_pixels(im) for im in images])
        groups: dict[str, list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault("" if isinstance(im, np.ndarray) else im.key, []).append(i)
        out: list[Any] = [None] * len(images)
        for crop_key, idx in groups.items():
            fingerprint = f"{self.fingerprint}|{crop_key}" if crop_key else self.fingerprint
            maps = self.cache.get_or_compute([_pixels(images[i]) for i in idx], fingerprint,
                                             self._extract)
            for i, m in zip(idx, maps):
                out[i] = m
        return out

    def features(self, image: ImageLike) -> FeatureMaps:
        return self.features_many([image])[0]

    def describe_pair(self, maps_a: FeatureMaps, maps_b: FeatureMaps) -> tuple[Any, Any]:
        return self.extractor.describe_pair(maps_a, maps_b)

    def cache_stats(self) -> CacheStats | None:
        return self.cache.stats() if self.cache is not None else None

    @property
    def match_params(self) -> MatchParams:
        from annotator.matching.transfer import MatchParams

        if self._match is None:
            cfg = self.config
            self._match = MatchParams(soft_window=cfg.softargmax_window,
                                      temperature=cfg.softargmax_temperature,
                                      flip_criterion=cfg.flip_criterion)
        return self._match

    # ---- transfer ------------------------------------------------------------------------
    def _transfer_maps(self, ref_maps: FeatureMaps, ref_points: np.ndarray,
                       ref_valid: np.ndarray | None, tgt_maps: FeatureMaps,
                       flip_ref_maps: FeatureMaps | None, perm: np.ndarray | None
                       ) -> TransferResult:
        from annotator.matching.transfer import transfer

        ref_d, tgt_d = self.extractor.describe_pair(ref_maps, tgt_maps)
        flip_d = flip_t = None
        if flip_ref_maps is not None:  # pair-dependent fusions: the flipped pair's own basis
            flip_d, flip_t = self.extractor.describe_pair(flip_ref_maps, tgt_maps)
        return transfer(ref_d, tgt_d, ref_points, ref_maps.letterbox, tgt_maps.letterbox,
                        self.match_params, ref_valid, flip_d, perm, flip_t)

    def transfer(self, ref_image: np.ndarray, ref_points: np.ndarray, target_image: np.ndarray,
                 flip_pairs: Iterable[tuple[int, int]] = (), ref_valid: np.ndarray | None = None,
                 flip: bool | None = None) -> TransferResult:
        """Move ref_points (K, 2) (original ref pixels) to the target; flip-aware when
        ``flip`` (default: config.flip or any flip_pairs given). Propagation never flips
        without left/right partners (annotator.jobs.propagate)."""
        return self.transfer_many([(ref_image, ref_points, ref_valid)], [target_image],
                                  flip_pairs, flip)[0]

    def transfer_many(self, references: Sequence[Reference], targets: Iterable[np.ndarray],
                      flip_pairs: Iterable[tuple[int, int]] = (), flip: bool | None = None
                      ) -> list[TransferResult]:
        """Each target extracted once; with several references the per-keypoint most
        confident match wins (annotator.matching.transfer.combine)."""
        return list(self.iter_transfer(references, targets, flip_pairs, flip))

    def iter_transfer(self, references: Sequence[Reference], targets: Iterable[ImageLike],
                      flip_pairs: Iterable[tuple[int, int]] = (), flip: bool | None = None,
                      *, fast: bool = True, prefetch: int = 0) -> Iterator[TransferResult]:
        """Generator form of ``transfer_many`` (one result per target, in order).

        Pair-independent fusions describe each reference once and each target once; copca
        fuses every (reference, target) pair on its own PCA basis. With ``fast`` (default),
        "concat"/"sd"/"dino" on the SD + DINOv2 extractor never materialise a target's fused
        descriptor (annotator.matching.transfer_parts: same results to float32 rounding).

        ``prefetch`` > 0 (fast path only): a background thread consumes ``targets`` and reads
        their features (cache, or extraction for misses) up to ``prefetch`` targets ahead, and
        the targets that are ready are matched together, up to ``prefetch`` at a time
        (annotator.matching.transfer_batch: same results). ``targets`` is then consumed ahead
        of the results, in that thread: only for iterables that do not rely on lockstep
        consumption. Closing the generator waits for the target being read."""
        from annotator.features.extractor import pair_dependent
        from annotator.matching.transfer import combine, transfer

        if not references:
            raise ValueError("at least one reference is needed")
        pairs = list(flip_pairs)
        use_flip = self.config.flip or bool(pairs) if flip is None else flip
        refs = []
        for image, points, valid in references:
            pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            maps = self.features(image)
            fmaps = self.features(_mirrored(image)) if use_flip else None
            refs.append((maps, pts, valid, fmaps, flip_permutation(len(pts), pairs)))
        ks = {len(r[1]) for r in refs}
        if len(ks) != 1:
            raise ValueError(f"references have different keypoint counts {sorted(ks)}")
        per_pair = pair_dependent(self.extractor)
        parts_fusion = None
        if not per_pair:
            describe = self.extractor.describe
            ref_desc = [(describe(m), describe(f) if f is not None else None) for m, _, _, f, _
                        in refs]
            if fast:
                from annotator.matching import transfer_parts as tp

                parts_fusion = tp.parts_fusion(self.extractor)
        if parts_fusion is not None:
            ref_parts = [(tp.PartsReference(parts_fusion, rd, m.layers, m.grid, m.norms),
                          tp.PartsReference(parts_fusion, fd, f.layers, f.grid, f.norms)
                          if f is not None and fd is not None else None)
                         for (m, _, _, f, _), (rd, fd) in zip(refs, ref_desc)]
        if parts_fusion is not None and prefetch > 0:
            yield from self._iter_parts_prefetched(refs, ref_parts, parts_fusion, targets,
                                                   prefetch)
            return
        for target in targets:
            tmaps = self.features(target)
            if per_pair:
                results = [self._transfer_maps(m, p, v, tmaps, f, perm)
                           for m, p, v, f, perm in refs]
            elif parts_fusion is not None:
                tgt_parts = tp.PartsDescriptor(parts_fusion, tmaps.layers, tmaps.grid,
                                                tmaps.norms)
                results = [tp.transfer_parts(rp, tgt_parts, p, m.letterbox, tmaps.letterbox,
                                             self.match_params, v, fp, perm)
                           for (m, p, v, _, perm), (rp, fp) in zip(refs, ref_parts)]
            else:
                tgt_d = self.extractor.describe(tmaps)
                results = [transfer(rd, tgt_d, p, m.letterbox, tmaps.letterbox, self.match_params,
                                    v, fd, perm)
                           for (m, p, v, _, perm), (rd, fd) in zip(refs, ref_desc)]
            yield results[0] if len(results) == 1 else combine(results)

    def _iter_parts_prefetched(self, refs: list[Any], ref_parts: list[Any], fusion: str,
                               targets: Iterable[np.ndarray], depth: int
                               ) -> Iterator[TransferResult]:
        """``iter_transfer``'s fast path with a prefetch thread and batched matching."""
        from annotator.matching import transfer_batch as tb
        from annotator.matching.transfer import combine
        from annotator.matching.transfer_parts import PartsDescriptor

        def load(target: np.ndarray) -> Any:
            return self.features(target)  # only this thread uses the cache meanwhile

        pf = tb.Prefetch(targets, load, depth)
        try:
            for first in pf:
                batch, error = [first], None
                while len(batch) < depth and pf.ready():
                    try:
                        batch.append(next(pf))
                    except StopIteration:
                        break
                    except Exception as exc:  # raised after the targets before it
                        error = exc
                        break
                descs = [PartsDescriptor(fusion, m.layers, m.grid, m.norms) for m in batch]
                lbs = [m.letterbox for m in batch]
                per_ref = [tb.transfer_parts_batch(rp, descs, p, m.letterbox, lbs,
                                                   self.match_params, v, fp, perm)
                           for (m, p, v, _, perm), (rp, fp) in zip(refs, ref_parts)]
                for i in range(len(batch)):
                    results = [r[i] for r in per_ref]
                    yield results[0] if len(results) == 1 else combine(results)
                if error is not None:
                    raise error
        finally:
            pf.close()

    def similarity_heatmap(self, ref_image: np.ndarray, point: np.ndarray,
                           target_image: np.ndarray) -> np.ndarray:
        """(G, G) cosine similarity of the reference cell under ``point`` (original px)."""
        from annotator.matching.transfer import similarity_heatmap

        rm, tm = self.features(ref_image), self.features(target_image)
        rd, td = self.extractor.describe_pair(rm, tm)
        u = rm.letterbox.to_canvas(np.asarray(point, dtype=np.float64).reshape(1, 2))[0]
        return similarity_heatmap(rd, td, u, rm.cell_size)
