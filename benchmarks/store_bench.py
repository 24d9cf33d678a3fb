"""SQLite project store at scale: a generated project of N images x 3 instances (default
100,000), headless.

Measures: writing the whole store (migration / Save as), reading what the gallery needs
(paths, status, worst confidence: no keypoint decoded), the full load, the legacy JSON load of
the same project, and an edit stream through the background autosaver (20 edits, each a
transaction) with a 5 ms heartbeat thread standing in for the GUI thread: the worst stall it
sees is the GIL held by the writer.

    PYTHONPATH=$PWD python benchmarks/store_bench.py --images 100000 --out /tmp/store-bench
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotator.domain import (  # noqa: E402
    ImageRecord,
    ImageStatus,
    Keypoint,
    KeypointSchema,
    Origin,
    Project,
    Visibility,
)
from annotator.domain.annotation import ImageAnnotation, Instance  # noqa: E402

K = 17


def generate(n: int, root: Path) -> Project:
    rng = random.Random(0)
    schema = KeypointSchema("person", tuple(f"k{i}" for i in range(K)))
    images = [ImageRecord(f"frames/{i:06d}.jpg", 1920, 1080) for i in range(n)]
    annotations = {}
    for rec in images:
        insts = []
        for j in range(3):
            kps = tuple(Keypoint(rng.uniform(0, 1900), rng.uniform(0, 1000), Visibility.VISIBLE,
                                 Origin.PREDICTED, round(rng.random(), 4)) for _ in range(K))
            insts.append(Instance(kps, (10.0 * j, 20.0, 300.0, 600.0), 0.9, None))
        annotations[rec.path] = ImageAnnotation(tuple(insts), ImageStatus.PREDICTED)
    return Project(str(root), images, schema, annotations)


class Heartbeat:
    """A 5 ms ticker thread; ``worst`` is the longest gap beyond the period."""

    def __init__(self, period: float = 0.005) -> None:
        self.period, self.worst, self._stop = period, 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(self.period)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - self.period)
            last = now

    def __enter__(self) -> Heartbeat:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def main() -> int:
    from annotator.io.autosave import Autosaver
    from annotator.io.project_file import load_project, save_project
    from annotator.io.store import ProjectStore

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--json", action="store_true", help="also time the legacy JSON load")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict[str, float | int | str] = {"images": args.images, "instances_per_image": 3,
                                          "keypoints": K}
    t = time.perf_counter()
    project = generate(args.images, args.out)
    res["generate_s"] = time.perf_counter() - t
    store = args.out / "bench.kpproj"
    t = time.perf_counter()
    save_project(project, store)
    res["write_store_s"] = time.perf_counter() - t
    res["store_mb"] = round(store.stat().st_size / 2**20, 1)
    if args.json:
        legacy = args.out / "bench.kpproj.json"
        save_project(project, legacy)
        t = time.perf_counter()
        load_project(legacy)
        res["load_json_s"] = time.perf_counter() - t
    del project
    t = time.perf_counter()
    s = ProjectStore(store)
    rows = s.gallery_rows()
    s.close()
    res["gallery_rows_s"] = time.perf_counter() - t
    assert len(rows) == args.images
    t = time.perf_counter()
    project = load_project(store)
    res["full_load_s"] = time.perf_counter() - t
    saver = Autosaver(project, store, background=True)
    paths = [r.path for r in project.images]
    lat = []
    with Heartbeat() as hb:
        for i in range(20):
            t = time.perf_counter()
            project.move_keypoint(paths[i * 997 % len(paths)], 0, 5.0 + i, 6.0, instance=1)
            lat.append(time.perf_counter() - t)
            time.sleep(0.1)
        saver.wait()
    res["edit_call_max_ms"] = round(max(lat) * 1000, 2)
    res["edit_stream_heartbeat_worst_ms"] = round(hb.worst * 1000, 2)
    with Heartbeat() as hb:
        t = time.perf_counter()
        saver.close()
        res["close_s"] = time.perf_counter() - t
    res["close_heartbeat_worst_ms"] = round(hb.worst * 1000, 2)
    for k, v in res.items():
        if isinstance(v, float):
            res[k] = round(v, 3)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
