"""``annotator bench``: engine vs reference-style baseline on full-size random-weight models."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

GUI_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gui_bench.py"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure the feature engine against a reference-style baseline",
        description="Builds SD 1.5 and DINOv2-base at full size with random weights (configs in "
        "benchmarks/configs, nothing downloaded) and measures, in one run: seconds per image "
        "for each preset (engine vs baseline, ratio), FLOPs and achieved FLOP/s against a "
        "measured matmul peak, keypoint transfer to cached targets, peak memory, cache bytes "
        "per image and, when the GUI is available, project opening and event-loop stalls.",
    )
    p.add_argument("--quick", action="store_true",
                   help="fewer repetitions and targets (under 10 minutes on a 2-core CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="dtype of the optimised engine (the baseline is always fp32)")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write")
    p.add_argument("--presets", default="fast,paper",
                   help="comma-separated presets: fast, paper, geoaware, diy")
    p.add_argument("--batch", type=int, default=None,
                   help="images per engine forward (default 1 on CPU, 8 on CUDA)")
    p.add_argument("--images", type=int, default=None, help="images per engine timing")
    p.add_argument("--targets", type=int, default=1000, help="targets of the transfer figure")
    p.add_argument("--disk-targets", type=int, default=None,
                   help="targets actually read from disk (default: all, 60 with --quick)")
    p.add_argument("--memory-targets", type=int, default=None)
    p.add_argument("--baseline-tiles", type=int, default=None,
                   help="baseline tiles measured per image, the rest extrapolated "
                        "(default: all; 0 with --quick on the CPU: the paper baseline's "
                        "tiles are the fast run's per-tile figures)")
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--compile", default="off",
                   choices=("off", "default", "reduce-overhead", "max-autotune"),
                   help="torch.compile the engine's hook-free modules (reduce-overhead: CUDA "
                        "graphs on CUDA); compilation counts as the first call's warm-up")
    p.add_argument("--transfer-prefetch", type=int, default=8,
                   help="targets read ahead and matched together in the transfer part")
    p.add_argument("--transfer-repeats", type=int, default=3,
                   help="repetitions per transfer case; the best steady state is reported "
                        "(all are in the JSON)")
    p.add_argument("--tiny-models", action="store_true",
                   help="scaled-down models instead of the full-size ones (dry runs, tests)")
    p.add_argument("--no-gui", action="store_true")
    p.add_argument("--gui-images", type=int, default=10000)
    p.set_defaults(func=run)


def gui_runner(n_images: int):
    """The GUI part runs benchmarks/gui_bench.py in a child process (offscreen Qt; the CLI
    layer does not import PySide6). Returns None when the script is not in this checkout."""
    if not GUI_SCRIPT.is_file():
        return None

    def run_gui(say: Any) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="annotator-guibench-") as tmp:
            out = Path(tmp) / "gui.json"
            proc = subprocess.run([sys.executable, str(GUI_SCRIPT), "--images", str(n_images),
                                   "--out", str(out)], capture_output=True, text=True,
                                  timeout=600, env={**__import__("os").environ,
                                                    "QT_QPA_PLATFORM": "offscreen"})
            err = [ln for ln in (proc.stderr or "").splitlines() if "Error" in ln or "File" in ln]
            if not out.is_file():
                return {"skipped": "GUI benchmark failed: " + " | ".join(err[-3:])}
            res = json.loads(out.read_text())
            if proc.returncode != 0:
                res["error"] = f"exit code {proc.returncode}: " + " | ".join(err[:4])
            return res

    return run_gui


def _tiny() -> dict[str, Any]:
    from annotator.bench.models import tiny_configs

    return tiny_configs()


def run(args: argparse.Namespace) -> int:
    from annotator.bench.runner import BenchOptions, format_table, run_bench, write_json

    presets = {name.strip(): None for name in args.presets.split(",") if name.strip()}
    gui = None if args.no_gui else gui_runner(args.gui_images)
    opts = BenchOptions(
        quick=args.quick, device=args.device, dtype=args.dtype, presets=presets,
        batch_size=args.batch, images=args.images, targets=args.targets,
        disk_targets=args.disk_targets, memory_targets=args.memory_targets,
        baseline_tiles=args.baseline_tiles, ablations=not args.no_ablations,
        compile=args.compile, transfer_prefetch=args.transfer_prefetch,
        transfer_repeats=args.transfer_repeats,
        configs=_tiny() if args.tiny_models else None,
        map_channels=({"s5": 32, "s4": 32, "s3": 16, "dino": 16} if args.tiny_models else None),
        transfer_preset="paper" if "paper" in presets else next(iter(presets)), gui=gui,
        command="annotator " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"]
        else "annotator bench",
    )
    if gui is None and not args.no_gui:
        print("note: GUI part skipped (benchmarks/gui_bench.py not found)", file=sys.stderr)

    def say(msg: str) -> None:
        print(msg, flush=True)

    res = run_bench(opts, say)
    print()
    print(format_table(res))
    if args.out is not None:
        print(f"wrote {write_json(res, args.out)}")
    return 0
