"""Feature cache across processes: a reader never gets wrong maps while another process
replaces the same entry, and entry files follow the umask."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from annotator.features.cache import FeatureCache
from annotator.features.extractor import FeatureMaps
from annotator.features.letterbox import Letterbox

KEY = "cd" * 32
_WRITER = """
import sys, time, torch
from pathlib import Path
from annotator.features.cache import FeatureCache
from annotator.features.extractor import FeatureMaps
from annotator.features.letterbox import Letterbox
folder, stop = Path(sys.argv[1]), Path(sys.argv[2])
maps = [FeatureMaps(layers={"a": torch.full((8, 16, 16), float(v))},
                    letterbox=Letterbox(40, 30, 48, 48, 36, 0, 6), grid=16) for v in (1, 2)]
cache = FeatureCache(folder, memory_bytes=0)
n = 0
while not stop.exists():
    cache.put(sys.argv[3], maps[n % 2])
    n += 1
    if n == 2:
        Path(sys.argv[4]).touch()  # writing has begun
print(n)
"""


def test_a_reader_never_gets_wrong_maps_while_another_process_replaces_the_entry(tmp_path):
    folder, stop = tmp_path / "cache", tmp_path / "stop"
    value = FeatureMaps(layers={"a": torch.full((8, 16, 16), 1.0)},
                        letterbox=Letterbox(40, 30, 48, 48, 36, 0, 6), grid=16)
    FeatureCache(folder, memory_bytes=0).put(KEY, value)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ready = tmp_path / "ready"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder), str(stop), KEY,
                               str(ready)], env=env, stdout=subprocess.PIPE, text=True)
    reader = FeatureCache(folder, memory_bytes=0)
    reads = seen = 0
    values: set[float] = set()
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        # at least 2 s of reads, then until both values were seen (a loaded machine slows
        # the writer down; the deadline only bounds a broken writer)
        start = time.monotonic()
        while time.monotonic() < start + 2.0 or (
                (seen < 20 or values != {1.0, 2.0}) and time.monotonic() < start + 60):
            maps = reader.get(KEY)
            reads += 1
            if maps is None:  # between a deletion of a damaged entry and a rewrite: a miss
                continue
            layer = maps.layers["a"]
            first = float(layer.reshape(-1)[0])
            assert first in (1.0, 2.0)
            assert torch.equal(layer, torch.full_like(layer, first))  # one whole entry
            values.add(first)
            seen += 1
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    writes = int(out.strip())
    assert writes >= 2 and seen >= 20, (writes, seen, reads)
    assert values == {1.0, 2.0}  # the reader did see the writer's replacements
    # a torn read is read again; only an entry replaced on every attempt is a miss (the
    # maps are then computed again, never wrong): rare even against this tight loop
    stats = reader.stats()
    assert stats.corrupt == 0 and stats.misses * 100 <= stats.hits, stats


def test_entries_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        cache = FeatureCache(tmp_path / "c", memory_bytes=0)
        cache.put(KEY, FeatureMaps(layers={"a": torch.ones(2, 3, 3)},
                                   letterbox=Letterbox(40, 30, 48, 48, 36, 0, 6), grid=3))
    finally:
        os.umask(old)
    (entry,) = (tmp_path / "c").glob("*/*.safetensors")
    assert entry.stat().st_mode & 0o777 == 0o644
