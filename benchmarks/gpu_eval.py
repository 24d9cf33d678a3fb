"""SPair-71k ablation of the presets in one command (driver of benchmarks/gpu_eval.sh).

For each run (default: paper, geoaware, geoaware+cleandift, diy, fast) it evaluates the SPair-71k
split with ``annotator.jobs.evaluate`` and records per-keypoint and per-image PCK at 0.1, 0.05
and 0.01 (error < alpha * max(bbox h, w), the reference code's rule), images/s of feature
extraction (only images actually extracted, not cache hits) and the peak GPU memory, then writes
one table beside the published figures: ``<out>/gpu_eval.md`` and ``<out>/gpu_eval.json`` (each
run's full report in ``<out>/<run>/``). "+cleandift" runs use ``--sd-unet`` with a prompt per
SPair category ("a photo of a {category}"): one extractor per category sharing the loaded
models. On a machine without a GPU the same path runs on tiny models or the content
descriptor (tests/test_gpu_eval.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RUNS = ("paper", "geoaware", "geoaware+cleandift", "diy", "fast")
ALPHAS = (0.1, 0.05, 0.01)
#: published SPair-71k test PCK@0.1 (bbox): (per-keypoint, per-image, source); DESIGN.md s. 4, 9
PUBLISHED: dict[str, tuple[float | None, float | None, str]] = {
    "paper": (64.0, 59.9, "A Tale of Two Features (NeurIPS 2023); per-image from GeoAware's "
                          "page; 63.7 per keypoint reproduced by CleanDIFT"),
    "paper+cleandift": (64.8, None, "CleanDIFT (CVPR 2025)"),
    "geoaware": (68.6, 64.2, "GeoAware-SC zero-shot (CVPR 2024), with SAM masks; this port "
                             "is mask-free"),
    "geoaware+cleandift": (70.0, None, "CleanDIFT (CVPR 2025), GeoAware pipeline"),
    "diy": (70.6, None, "DIY-SC DINOv2 adapter (ICCV 2025)"),
    "fast": (None, None, "this project's cheaper preset (no published figure)"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spair", type=Path, required=True, help="SPair-71k folder")
    p.add_argument("--split", default="test")
    p.add_argument("--runs", default=",".join(RUNS),
                   help="comma-separated runs: a preset name, optionally +cleandift")
    p.add_argument("--out", type=Path, default=Path("gpu-eval"))
    p.add_argument("--limit", type=int, default=None, help="at most N pairs per run")
    p.add_argument("--categories", nargs="+", default=None)
    p.add_argument("--sd-model", default=None)
    p.add_argument("--dino-model", default=None)
    p.add_argument("--sd-unet", default="CompVis/cleandift/cleandift_sd15_unet.safetensors",
                   help="UNet state dict for the +cleandift runs")
    p.add_argument("--diy-checkpoint", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--cache-dir", default=None, help="feature cache (default: none)")
    p.add_argument("--feature-config", type=Path, default=None,
                   help="JSON of FeatureConfig fields overriding every preset (tiny models)")
    p.add_argument("--extractor", choices=("sd-dino", "content"), default="sd-dino")
    args = p.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    from annotator.cli.common import PRESET_NAMES

    bad = [r for r in runs if r.split("+")[0] not in PRESET_NAMES
           or r.count("+") > 1 or (r.count("+") == 1 and not r.endswith("+cleandift"))]
    if bad or not runs:
        p.error(f"unknown runs {bad}; use {', '.join(PRESET_NAMES)}, optionally +cleandift")
    args.run_list = runs
    return args


def engine_args(args: argparse.Namespace, run: str) -> argparse.Namespace:
    """The ``annotator`` engine flags of one run, parsed by the CLI's own engine parser (so
    every engine option keeps its CLI default)."""
    from annotator.cli.common import add_engine_arguments

    name, _, extra = run.partition("+")
    argv = ["--extractor", args.extractor, "--preset", name, "--device", args.device,
            "--dtype", args.dtype, "--batch-size", str(args.batch_size)]
    for flag, value in (("--sd-model", args.sd_model), ("--dino-model", args.dino_model),
                        ("--feature-config", args.feature_config),
                        ("--diy-checkpoint", args.diy_checkpoint),
                        ("--sd-unet", args.sd_unet if extra == "cleandift" else None),
                        ("--cache-dir", args.cache_dir)):
        if value is not None:
            argv += [flag, str(value)]
    if args.cache_dir is None:
        argv.append("--no-cache")
    parser = argparse.ArgumentParser(add_help=False)
    add_engine_arguments(parser)
    return parser.parse_args(argv)


class Meter:
    """Counts the images an extractor really extracts and the seconds it takes."""

    def __init__(self, device: str) -> None:
        self.images, self.seconds = 0, 0.0
        self.cuda = device.startswith("cuda")

    def wrap(self, extractor: Any) -> None:
        if getattr(extractor, "_metered", False):
            return
        inner = extractor.extract

        def extract(images):  # noqa: ANN001, ANN202
            import torch

            if self.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = inner(images)
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - t0
            self.images += len(images)
            return out

        extractor.extract = extract
        extractor._metered = True


#: SPair category names as words for the prompt (as GeoAware-SC converts them)
CATEGORY_WORDS = {"aeroplane": "airplane", "motorbike": "motorcycle",
                  "pottedplant": "potted plant", "tvmonitor": "tv"}


class CategoryEngines:
    """One engine per SPair category for a "{category}" prompt (``Engine.for_category``: the
    loaded models are shared), else the base engine for all."""

    def __init__(self, base: Any, meter: Meter) -> None:
        self.base, self.meter = base, meter
        self._engines: dict[str, Any] = {}

    def get(self, category: str) -> Any:
        if category not in self._engines:
            engine = self.base.for_category(CATEGORY_WORDS.get(category, category))
            self.meter.wrap(engine.extractor)
            self._engines[category] = engine
        return self._engines[category]

    def prompts(self) -> list[str]:
        return sorted({e.config.prompt for e in self._engines.values()})


def run_one(args: argparse.Namespace, run: str, dataset: Any) -> dict[str, Any]:
    from annotator.cli.common import engine_from_args
    from annotator.io.datasets import PairDataset, PairRecord
    from annotator.jobs.evaluate import EvalConfig, engine_predictor, evaluate
    from annotator.jobs.report import write_report

    device = args.device
    try:
        import torch

        from annotator.features.config import resolve_device

        device = resolve_device(args.device)
        import gc

        gc.collect()  # the previous run's models (the metering wrappers make cycles)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    except ImportError:  # pragma: no cover
        torch = None  # type: ignore[assignment]
    base = engine_from_args(engine_args(args, run))
    meter = Meter(device)
    engines = CategoryEngines(base, meter) if args.extractor == "sd-dino" else None
    if engines is None:
        meter.wrap(base.extractor)
    current: dict[str, str] = {}

    def tagged(record: PairRecord) -> PairRecord:
        def load():  # noqa: ANN202
            current["category"] = record.category
            return record.load()

        return PairRecord(record.pair_id, record.category, load)

    records = sorted(dataset.records, key=lambda r: r.category)  # one category after another
    data = PairDataset(dataset.name, dataset.root, tuple(tagged(r) for r in records),
                       dataset.protocol, dataset.split)

    def predict(src, trg, kps):  # noqa: ANN001, ANN202
        engine = engines.get(current["category"]) if engines is not None else base
        return engine_predictor(engine)(src, trg, kps)

    config = engine_args(args, run)
    settings = {"run": run, "preset": run.split("+")[0], "extractor": args.extractor,
                "sd_unet": config.sd_unet, "dtype": args.dtype, "device": device,
                "prompt": base.config.prompt}
    result = evaluate(data, predict, EvalConfig(alphas=ALPHAS, limit=args.limit),
                      settings=settings)
    peak = None
    if torch is not None and device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**30
    write_report({run: result}, args.out / run.replace("+", "_"), stem="spair")
    st = result.table.overall
    row = {"run": run, "pairs": st.num_pairs, "points": st.num_points,
           "per_keypoint": dict(zip(map(str, result.alphas), (100 * v for v in st.per_keypoint))),
           "per_image": dict(zip(map(str, result.alphas), (100 * v for v in st.per_image))),
           "images_extracted": meter.images,
           "images_per_second": meter.images / meter.seconds if meter.seconds else None,
           "pairs_per_second": st.num_pairs / result.elapsed_s if result.elapsed_s else None,
           "peak_gpu_gib": peak, "published": PUBLISHED.get(run), "settings": settings,
           "prompts": engines.prompts() if engines is not None else []}
    return row


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [f"# SPair-71k ({header['split']}) presets ablation", "",
             f"Date {header['date']}; device {header['device']}; dtype {header['dtype']}; "
             f"extractor {header['extractor']}; PCK = error < alpha * max(bbox h, w); "
             "per-keypoint pools all points, per-image averages images.", "",
             "| run | pairs | kp@0.1 | kp@0.05 | kp@0.01 | img@0.1 | img@0.05 | img@0.01 | "
             "images/s | peak GPU GiB | published kp@0.1 | published img@0.1 | source |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kp, im = r["per_keypoint"], r["per_image"]
        pub = r["published"] or (None, None, "")
        lines.append(
            f"| {r['run']} | {r['pairs']} | " + " | ".join(_f(kp[str(a)]) for a in ALPHAS)
            + " | " + " | ".join(_f(im[str(a)]) for a in ALPHAS)
            + f" | {_f(r['images_per_second'], 2)} | {_f(r['peak_gpu_gib'], 2)} | "
            f"{_f(pub[0])} | {_f(pub[1])} | {pub[2]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import datetime

    from annotator.io.datasets import load_spair

    args = parse_args(argv)
    dataset = load_spair(args.spair, args.split, args.categories)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in args.run_list:
        print(f"== {run}", flush=True)
        rows.append(run_one(args, run, dataset))
        print(json.dumps({k: rows[-1][k] for k in ("run", "per_keypoint", "per_image",
                                                    "images_per_second", "peak_gpu_gib")}),
              flush=True)
    header = {"split": args.split, "date": datetime.date.today().isoformat(),
              "device": args.device, "dtype": args.dtype, "extractor": args.extractor}
    (args.out / "gpu_eval.json").write_text(json.dumps({**header, "runs": rows}, indent=1))
    text = table(rows, header)
    (args.out / "gpu_eval.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
