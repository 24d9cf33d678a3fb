"""Feature cache: bounded in-memory LRU plus an on-disk safetensors store.

Key = sha256(image array bytes + shape) + the extractor fingerprint (model ids and revisions,
feature config fields, dtype, extractor name). On disk the maps are stored in ``storage_dtype``
(float16 by default: about 13 MB per image at the paper preset, 6.5 M values: s5 1280x15x15,
s4 1280x30x30, s3 640x60x60, DINO 768x60x60). ``put`` returns the stored-precision maps so a
hit and a miss give identical values. Each file carries a sha256 checksum of its tensor bytes in
the safetensors metadata; a corrupt or truncated entry is deleted and reported as a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from annotator.features.extractor import FeatureMaps
from annotator.features.letterbox import Letterbox

log = logging.getLogger(__name__)

APP_NAME = "keypoint-annotator"


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    memory_hits: int
    disk_hits: int
    corrupt: int
    memory_bytes: int
    disk_bytes: int
    disk_entries: int


def image_hash(image: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """LRU in memory (``memory_bytes``) and on disk (``disk_bytes``, evicting oldest mtime)."""

    def __init__(self, directory: str | Path | None = None, memory_bytes: int = 1 << 30,
                 disk_bytes: int = 20 << 30, storage_dtype: torch.dtype = torch.float16,
                 use_disk: bool = True) -> None:
        if storage_dtype not in (torch.float16, torch.float32):
            raise ValueError("storage_dtype must be torch.float16 or torch.float32")
        if directory is None and use_disk:
            import platformdirs

            directory = Path(platformdirs.user_cache_dir(APP_NAME)) / "features"
        self.directory = Path(directory) if (use_disk and directory is not None) else None
        self.memory_bytes, self.disk_bytes = int(memory_bytes), int(disk_bytes)
        self.storage_dtype = storage_dtype
        self._mem: OrderedDict[str, FeatureMaps] = OrderedDict()
        self._mem_used = 0
        self._counts = {"hits": 0, "misses": 0, "memory_hits": 0, "disk_hits": 0, "corrupt": 0}

    def key(self, image: np.ndarray, fingerprint: str) -> str:
        """Entry key: image content, extractor fingerprint and the storage precision."""
        blob = f"{image_hash(image)}:{fingerprint}:{self.storage_dtype}"
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.safetensors"

    # ---- memory -------------------------------------------------------------------------
    def _remember(self, key: str, maps: FeatureMaps) -> None:
        if key in self._mem:
            self._mem_used -= self._mem.pop(key).nbytes()
        size = maps.nbytes()
        if size > self.memory_bytes:
            return
        self._mem[key] = maps
        self._mem_used += size
        while self._mem_used > self.memory_bytes:
            _, old = self._mem.popitem(last=False)
            self._mem_used -= old.nbytes()

    # ---- disk ---------------------------------------------------------------------------
    def _read(self, key: str) -> FeatureMaps | None:
        if self.directory is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            if meta.get("checksum") != _checksum(tensors):
                raise ValueError("checksum mismatch")
            lb = Letterbox(**json.loads(meta["letterbox"]))
            maps = FeatureMaps(layers=tensors, letterbox=lb, grid=int(meta["grid"]))
        except Exception as exc:  # any unreadable entry is corrupt: never use it
            log.warning("corrupt feature cache entry %s (%s): deleted", path, exc)
            self._counts["corrupt"] += 1
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # LRU by mtime
        except OSError:  # evicted meanwhile by another process: the maps are still good
            pass
        return maps

    def _write(self, key: str, maps: FeatureMaps) -> None:
        if self.directory is None:
            return
        from safetensors.torch import save_file

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in maps.layers.items()}
        lb = maps.letterbox
        meta = {"checksum": _checksum(tensors), "grid": str(maps.grid),
                "letterbox": json.dumps(lb.__dict__)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._evict_disk()

    def _entries(self) -> list[tuple[float, int, Path]]:
        if self.directory is None or not self.directory.is_dir():
            return []
        out = []
        for p in self.directory.glob("*/*.safetensors"):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, p))
        return out

    def _evict_disk(self) -> None:
        assert self.directory is not None
        stale = time.time() - 3600  # temporary files left by a killed process
        for tmp in self.directory.glob("*/*.tmp"):
            try:
                if tmp.stat().st_mtime < stale:
                    tmp.unlink()
            except OSError:
                pass
        entries = sorted(self._entries(), key=lambda e: e[0])
        total = sum(e[1] for e in entries)
        for _, size, p in entries:
            if total <= self.disk_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size

    # ---- public -------------------------------------------------------------------------
    def get(self, key: str) -> FeatureMaps | None:
        """Cached maps or None (counts a hit or a miss)."""
        if key in self._mem:
            self._mem.move_to_end(key)
            self._counts["hits"] += 1
            self._counts["memory_hits"] += 1
            return self._mem[key]
        maps = self._read(key)
        if maps is None:
            self._counts["misses"] += 1
            return None
        self._counts["hits"] += 1
        self._counts["disk_hits"] += 1
        self._remember(key, maps)
        return maps

    def put(self, key: str, maps: FeatureMaps) -> FeatureMaps:
        """Store ``maps``; returns them converted to the storage dtype (use these)."""
        stored = FeatureMaps(
            layers={k: v.detach().to("cpu", self.storage_dtype).contiguous()
                    for k, v in maps.layers.items()},
            letterbox=maps.letterbox, grid=maps.grid)
        try:
            self._write(key, stored)
        except OSError as exc:  # full disk, read-only folder: keep working from memory
            log.warning("feature cache entry not written to disk (%s)", exc)
        self._remember(key, stored)
        return stored

    def get_or_compute(self, images: Sequence[np.ndarray], fingerprint: str,
                       compute: Callable[[list[np.ndarray]], list[FeatureMaps]]
                       ) -> list[FeatureMaps]:
        """Maps for every image; the misses are computed in one ``compute`` call."""
        keys = [self.key(im, fingerprint) for im in images]
        found: list[FeatureMaps | None] = [self.get(k) for k in keys]
        todo = [i for i, m in enumerate(found) if m is None]
        if todo:
            computed = compute([images[i] for i in todo])
            if len(computed) != len(todo):
                raise RuntimeError("extractor returned a wrong number of feature maps")
            for i, maps in zip(todo, computed):
                found[i] = self.put(keys[i], maps)
        return [m for m in found if m is not None]

    def clear_memory(self) -> None:
        self._mem.clear()
        self._mem_used = 0

    def stats(self) -> CacheStats:
        entries = self._entries()
        return CacheStats(memory_bytes=self._mem_used, disk_bytes=sum(e[1] for e in entries),
                          disk_entries=len(entries), **self._counts)
