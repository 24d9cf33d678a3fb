"""Feature cache: bounded in-memory LRU plus an on-disk safetensors store.

Key = sha256(image array bytes + shape) + the extractor fingerprint (model ids and revisions,
feature config fields, dtype, extractor name). On disk the maps are stored in ``storage_dtype``
(float16 by default: about 13 MB per image at the paper preset, 6.5 M values: s5 1280x15x15,
s4 1280x30x30, s3 640x60x60, DINO 768x60x60). ``put`` returns the stored-precision maps so a
hit and a miss give identical values.

The cache owns its folder: it creates it (or adopts an empty one) and marks it with
:data:`MARKER_NAME`; a folder holding anything else is refused (:class:`CacheFolderError`).
Entries live at ``<folder>/<k[:2]>/<k>.safetensors`` (``k`` a 64-digit hex key); eviction and
clean-up touch only files of exactly that layout (and temporary files of our own naming), so
nothing the cache did not write is ever deleted. Each entry carries a checksum (xxh3-128; entries
of format 2 used sha256, which costs 8 ms per paper entry against under 1 ms) of its tensor names,
dtypes, shapes and bytes *and* its metadata (grid, letterbox, channel-last layers); an entry is
verified every time it is read from disk (damage that keeps the size and mtime, or an entry
replaced by another process meanwhile, is never trusted; about 1 ms per paper entry), and a
corrupt or truncated one is reported as a miss and deleted when the folder allows it. Entries
are written to a temporary file and renamed; a read that fails while another process replaced
the entry (a changed inode or mtime) is read again rather than counted as damage. Entry files
follow the umask. Layers (C, h, w)
are stored channel-last ((h, w, C) on disk, a (C, h, w) view of that memory when read), each
cell's channels together: the transfer reads them as rows. Entries also keep each layer's
per-cell norms at the descriptor grid (``FeatureMaps.norms``, computed once from the stored
values when the entry is stored), which the transfer's fast path would otherwise recompute per
target.
Disk problems (full, read-only, corrupt) are logged and the maps are computed without caching:
the cache never aborts a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from annotator.features.cell_norms import cell_norms
from annotator.features.extractor import FeatureMaps
from annotator.features.letterbox import Letterbox
from annotator.io.cache_folder import ENTRY as _ENTRY
from annotator.io.cache_folder import HEX64 as _HEX64
from annotator.io.cache_folder import MARKER_NAME, cache_folder_problem
from annotator.io.cache_folder import SHARD as _SHARD
from annotator.io.cache_folder import TMP as _TMP
from annotator.io.project_file import process_umask

log = logging.getLogger(__name__)

APP_NAME = "keypoint-annotator"
FORMAT = "keypoint-annotator-feature-cache"
ENTRY_FORMAT = "3"  # xxh3-128, per-cell norms, channel-last layers; "2" (sha256) still read
_READ_FORMATS = ("2", ENTRY_FORMAT)
NORM_PREFIX = "norm2:"  # entry tensor names of FeatureMaps.norms (layer names never start so)
_READ_ATTEMPTS = 3  # reads of an entry that another process keeps replacing
_STALE_TMP_S = 3600.0  # temporary files older than this were left by a killed process




class CacheFolderError(ValueError):
    """The cache folder cannot be used (it holds other content); the message says why."""


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


def _checksum(tensors: dict[str, torch.Tensor], grid: str, letterbox: str,
              entry_format: str = ENTRY_FORMAT, hwc: str = "") -> str:
    """Checksum over every tensor's name, dtype, shape and bytes and the entry metadata: xxh3-128
    (format 3) or sha256 (format 2, still read). Not a defence against a forger, who could
    rewrite the checksum too: it detects damage (flipped bits, truncation, edits)."""
    if entry_format == "2":
        h = hashlib.sha256()
    else:
        import xxhash

        h = xxhash.xxh3_128()
    head = f"{FORMAT}/{entry_format}\0grid={grid}\0letterbox={letterbox}\0"
    if entry_format != "2":
        head += f"hwc={hwc}\0"
    h.update(head.encode())
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # no copy of the bytes
    return h.hexdigest()


def _letterbox_json(lb: Letterbox) -> str:
    return json.dumps(lb.__dict__, sort_keys=True, allow_nan=False)


def _channel_last(x: torch.Tensor) -> torch.Tensor:
    """A (C, h, w) layer as a (C, h, w) view of (h, w, C) contiguous memory (how entries are
    stored: each cell's channels together, what the transfer's row gathers and 1x1 products
    read); other shapes contiguous."""
    if x.ndim != 3:
        return x.contiguous()
    return x.permute(1, 2, 0).contiguous().permute(2, 0, 1)


def _norms_of(layers: dict[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor] | None:
    """Per-cell norms of the stored-precision layers (None for layers that are not (C, h, w))."""
    if not all(v.ndim == 3 for v in layers.values()):
        return None
    return cell_norms(layers, grid)


class FeatureCache:
    """LRU in memory (``memory_bytes``) and on disk (``disk_bytes`` > 0, evicting the oldest
    mtime), in a folder the cache owns (see the module docstring)."""

    def __init__(self, directory: str | Path | None = None, memory_bytes: int = 1 << 30,
                 disk_bytes: int = 20 << 30, storage_dtype: torch.dtype = torch.float16,
                 use_disk: bool = True) -> None:
        if storage_dtype not in (torch.float16, torch.float32):
            raise ValueError("storage_dtype must be torch.float16 or torch.float32")
        if int(memory_bytes) < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes}")
        if use_disk and int(disk_bytes) <= 0:
            raise ValueError(f"the disk cache cap must be > 0 bytes, got {disk_bytes}")
        if directory is None and use_disk:
            import platformdirs

            directory = Path(platformdirs.user_cache_dir(APP_NAME)) / "feature-cache"
        self.directory = Path(directory) if (use_disk and directory is not None) else None
        self.memory_bytes, self.disk_bytes = int(memory_bytes), int(disk_bytes)
        self.storage_dtype = storage_dtype
        self._mem: OrderedDict[str, FeatureMaps] = OrderedDict()
        self._mem_used = 0
        self._counts = {"hits": 0, "misses": 0, "memory_hits": 0, "disk_hits": 0, "corrupt": 0}
        self._write_warned = False
        if self.directory is not None:
            self._claim(self.directory)

    # ---- folder ownership ---------------------------------------------------------------
    def _claim(self, folder: Path) -> None:
        """Create and mark ``folder``, adopt an empty one (or one holding only entries of our
        layout), refuse anything else; a folder that cannot be created only disables
        writing (warned)."""
        marker = folder / MARKER_NAME
        if marker.is_file():
            return
        if folder.exists() and not folder.is_dir():
            raise CacheFolderError(f"feature cache folder {folder} is a file, not a folder")
        problem = cache_folder_problem(folder)
        if problem is not None:
            raise CacheFolderError(problem)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"format": FORMAT, "version": 1}) + "\n")
        except OSError as exc:
            log.warning("feature cache folder %s cannot be created or marked (%s): features "
                        "are computed without the disk cache", folder, exc)
            self._write_warned = True

    def key(self, image: np.ndarray, fingerprint: str) -> str:
        """Entry key: image content, extractor fingerprint and the storage precision."""
        blob = f"{image_hash(image)}:{fingerprint}:{self.storage_dtype}"
        return hashlib.sha256(blob.encode()).hexdigest()

    @staticmethod
    def _disk_key(key: str) -> str:
        """``key`` when it is a 64-digit hex key (as :meth:`key` makes), else its sha256."""
        return key if _HEX64.match(key) else hashlib.sha256(key.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        key = self._disk_key(key)
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
        for _ in range(_READ_ATTEMPTS):
            try:
                before = path.stat()
            except OSError:
                return None
            try:
                maps = self._load(path)
            except Exception as exc:  # any unreadable entry is corrupt: never use it
                try:
                    after = path.stat()
                except OSError:
                    return None  # evicted or deleted meanwhile
                if (after.st_ino, after.st_mtime_ns) != (before.st_ino, before.st_mtime_ns):
                    continue  # replaced by another process while read: read it again
                self._counts["corrupt"] += 1
                try:
                    path.unlink(missing_ok=True)
                    log.warning("corrupt feature cache entry %s (%s): deleted", path, exc)
                except OSError as del_exc:
                    log.warning("corrupt feature cache entry %s (%s): not used, cannot be "
                                "deleted (%s)", path, exc, del_exc)
                return None
            try:
                os.utime(path)  # LRU by mtime
            except OSError:  # read-only folder or evicted meanwhile: the maps are still good
                pass
            return maps
        return None  # replaced on every attempt: a miss

    @staticmethod
    def _load(path: Path) -> FeatureMaps:
        """The verified maps of the entry at ``path``. Every read is verified (xxh3, under
        1 ms per paper entry): damage that keeps size and mtime is caught, and so is a read
        torn by another process replacing the entry (safetensors opens the path once for
        the header and again for the data)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        fmt = meta.get("format")
        if fmt not in _READ_FORMATS:
            raise ValueError("entry of another format version")
        if meta.get("checksum") != _checksum(tensors, meta["grid"], meta["letterbox"],
                                             fmt, meta.get("hwc", "")):
            raise ValueError("checksum mismatch")
        lb = Letterbox(**json.loads(meta["letterbox"]))
        hwc = json.loads(meta["hwc"]) if "hwc" in meta else []
        if (not isinstance(hwc, list) or len(set(map(str, hwc))) != len(hwc)
                or any(not isinstance(k, str) or k not in tensors or tensors[k].ndim != 3
                       for k in hwc)):
            raise ValueError("bad channel-last layer list")
        for k in hwc:  # stored (h, w, C): the (C, h, w) channel-last view
            tensors[k] = tensors[k].permute(2, 0, 1)
        layers = {k: v for k, v in tensors.items() if not k.startswith(NORM_PREFIX)}
        norms = {k[len(NORM_PREFIX):]: v for k, v in tensors.items()
                 if k.startswith(NORM_PREFIX)}
        return FeatureMaps(layers=layers, letterbox=lb, grid=int(meta["grid"]),
                           norms=norms or None)

    def _write(self, key: str, maps: FeatureMaps) -> None:
        if self.directory is None:
            return
        from safetensors.torch import save_file

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        hwc_names = sorted(k for k, v in maps.layers.items() if v.ndim == 3)
        tensors = {k: (v.permute(1, 2, 0) if k in hwc_names else v).contiguous()
                   for k, v in maps.layers.items()}
        tensors.update({NORM_PREFIX + k: v.contiguous() for k, v in (maps.norms or {}).items()})
        grid, lb = str(maps.grid), _letterbox_json(maps.letterbox)
        hwc = json.dumps(hwc_names)
        meta = {"format": ENTRY_FORMAT, "checksum": _checksum(tensors, grid, lb, hwc=hwc),
                "grid": grid, "letterbox": lb, "hwc": hwc}
        tmp = str(path.parent / f".{self._disk_key(key)}.{secrets.token_hex(8)}.kpc-tmp")
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            save_file(tensors, tmp, metadata=meta)
            os.chmod(tmp, 0o666 & ~process_umask())  # safetensors writes 0600
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._evict_disk()

    def _own_files(self) -> Iterator[tuple[os.DirEntry[str], bool]]:
        """(file, is_entry) for every entry and temporary file of our layout."""
        if self.directory is None:
            return
        try:
            shards = [s for s in os.scandir(self.directory)
                      if _SHARD.match(s.name) and s.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for shard in shards:
            try:
                files = list(os.scandir(shard.path))
            except OSError:
                continue
            for f in files:
                if not f.is_file(follow_symlinks=False):
                    continue
                m = _ENTRY.match(f.name)
                if m and m.group(1)[:2] == shard.name:
                    yield f, True
                elif _TMP.match(f.name):
                    yield f, False

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for f, is_entry in self._own_files():
            if not is_entry:
                continue
            try:
                st = f.stat(follow_symlinks=False)
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, Path(f.path)))
        return out

    def _evict_disk(self) -> None:
        stale = time.time() - _STALE_TMP_S
        entries = []
        for f, is_entry in self._own_files():
            try:
                st = f.stat(follow_symlinks=False)
                if is_entry:
                    entries.append((st.st_mtime, st.st_size, Path(f.path)))
                elif st.st_mtime < stale:
                    os.unlink(f.path)
            except OSError:
                pass
        entries.sort(key=lambda e: e[0])
        total = sum(e[1] for e in entries)
        for _, size, p in entries:
            if total <= self.disk_bytes:
                break
            try:
                p.unlink(missing_ok=True)
            except OSError:
                continue
            total -= size

    # ---- public -------------------------------------------------------------------------
    def get(self, key: str) -> FeatureMaps | None:
        """Cached maps or None (counts a hit or a miss); never raises for disk problems."""
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
        layers = {k: _channel_last(v.detach().to("cpu", self.storage_dtype))
                  for k, v in maps.layers.items()}
        if any(k.startswith(NORM_PREFIX) for k in layers):
            raise ValueError(f"layer names must not start with {NORM_PREFIX!r}")
        stored = FeatureMaps(layers=layers, letterbox=maps.letterbox, grid=maps.grid,
                             norms=_norms_of(layers, maps.grid))
        try:
            self._write(key, stored)
        except Exception as exc:  # full disk (safetensors raises its own error), read-only
            level = logging.DEBUG if self._write_warned else logging.WARNING
            log.log(level, "feature cache entry not written to disk (%s: %s); features are "
                    "kept in memory only", type(exc).__name__, exc)
            self._write_warned = True
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
