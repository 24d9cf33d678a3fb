"""SIGKILL loop of the reliability suite (run as a script by tests/test_reliability_saving.py).

One process imports the project code once, then ``--kills`` times: forks a child that opens
the SQLite project store, edits it through the real ``Project`` and a background
``Autosaver`` (each edit a transaction, as in the GUI), reporting each edit's number and time,
and the start and end of each write transaction, on a pipe; SIGKILLs the child after a random
``--min-ms``..``--max-ms``; reopens the project and checks it loads and holds exactly the edits
1..m for some m (no hole, no torn state). Edit k sets keypoint k % K of image k % N to x = k,
so the state after m edits is known. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotator.domain import ImageRecord, Keypoint, KeypointSchema, Project, Visibility  # noqa: E402
from annotator.io.autosave import Autosaver  # noqa: E402
from annotator.io.project_file import load_project, save_project  # noqa: E402

K = 3


def expected(m: int, n: int) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for k in range(1, m + 1):
        out[(k % n, k % K)] = k
    return out


def state(project: Project) -> dict[tuple[int, int], int]:
    out = {}
    for i, rec in enumerate(project.images):
        ann = project.annotation(rec.path)
        if ann.instances:
            for j, kp in enumerate(ann.instances[0].keypoints):
                if kp.labelled:
                    out[(i, j)] = int(kp.x)
    return out


def child(path: Path, start: int, n: int, wfd: int, seed: int) -> None:
    rng = random.Random(seed)
    real_write = Autosaver._write

    def traced_write(self, changes):  # noqa: ANN001, ANN202
        os.write(wfd, b"S\n")  # small pipe writes are atomic, from any thread
        real_write(self, changes)
        os.write(wfd, b"E\n")

    Autosaver._write = traced_write  # type: ignore[method-assign]
    project = load_project(path)
    saver = Autosaver(project, path, background=True)
    paths = [r.path for r in project.images]
    k = start
    while True:
        k += 1
        project.set_keypoint(paths[k % n], k % K, Keypoint(float(k), 1.0, Visibility.VISIBLE))
        os.write(wfd, f"{k} {time.monotonic():.6f}\n".encode())
        saver.maybe_save()
        time.sleep(rng.uniform(0, 0.004))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-ms", type=float, default=20.0)
    ap.add_argument("--max-ms", type=float, default=150.0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    n = args.images
    path = args.dir / "kill.kpproj"
    schema = KeypointSchema("s", tuple(f"k{j}" for j in range(K)))
    save_project(Project(str(args.dir), [ImageRecord(f"im{i:05d}.png") for i in range(n)],
                         schema), path)
    done = 0  # edits known to be in the project
    lost_counts, lost_ages, problems, edits = [], [], [], 0
    during_save = 0
    t0 = time.monotonic()
    for i in range(args.kills):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(r)
            try:
                child(path, done, n, w, rng.randrange(1 << 30))
            finally:
                os._exit(1)
        os.close(w)
        time.sleep(rng.uniform(args.min_ms, args.max_ms) / 1000)
        os.kill(pid, signal.SIGKILL)
        kill_time = time.monotonic()
        os.waitpid(pid, 0)
        with os.fdopen(r) as f:
            reports = [line.split() for line in f.read().splitlines()]
        made = {int(k): float(t) for k, t in (x for x in reports if len(x) == 2)}
        marks = [x[0] for x in reports if len(x) == 1]
        if marks and marks[-1] == "S":
            during_save += 1
        last = max(made, default=done)
        try:
            project = load_project(path)
        except Exception as exc:  # the project must always load
            problems.append(f"kill {i}: does not load: {type(exc).__name__}: {exc}")
            break
        got = state(project)
        m = max(got.values(), default=0)
        if got != expected(m, n):
            problems.append(f"kill {i}: state is not the result of edits 1..{m}")
            break
        if m < done:
            problems.append(f"kill {i}: edits {m + 1}..{done} recovered before are gone")
            break
        lost = [k for k in made if k > m]
        lost_counts.append(len(lost))
        lost_ages.extend(kill_time - made[k] for k in lost)
        edits += last - done
        done = m
    summary = {
        "kills": len(lost_counts), "edits": edits, "problems": problems,
        "lost_edits_total": sum(lost_counts),
        "lost_edits_max_per_kill": max(lost_counts, default=0),
        "lost_edit_max_age_s": max(lost_ages, default=0.0),
        "seconds": time.monotonic() - t0,
        "kills_during_a_save": during_save,  # inside a write transaction
        "files": sorted(p.name for p in args.dir.iterdir()),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
