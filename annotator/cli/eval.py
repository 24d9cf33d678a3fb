"""``annotator eval`` (PCK on SPair-71k, PF-Pascal, TSS or a COCO keypoint file) and
``annotator geometry`` (warped scikit-image photographs with exact answers)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from annotator.cli.cluster import add_ray_arguments
from annotator.cli.common import add_engine_arguments

log = logging.getLogger(__name__)

DATASETS = ("spair", "pfpascal", "tss", "coco", "labelled")


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class TqdmProgress:
    """Progress sink for jobs (``set_progress``/``check``) drawing a tqdm bar on stderr."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self._bar: Any = None

    def set_progress(self, done: int, total: int, message: str = "") -> None:
        from tqdm import tqdm

        if self._bar is None or self._bar.total != total:
            self.close()
            self._bar = tqdm(total=total, desc=self.desc, unit="pair", file=sys.stderr,
                             dynamic_ncols=True)
        self._bar.n = done
        self._bar.refresh()

    def check(self) -> None:  # the CLI is cancelled with Ctrl-C
        return None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _engine_settings(args: argparse.Namespace, extractor: str) -> dict[str, Any]:
    settings: dict[str, Any] = {"extractor": extractor}
    if extractor == "sd-dino":
        settings.update(sd_model=args.sd_model or "default", dino_model=args.dino_model or
                        "default", device=args.device, dtype=args.dtype)
    settings["preset"] = args.preset or "paper"
    for key in ("fusion", "flip", "soft_argmax"):
        value = getattr(args, key, None)
        settings[key] = "default" if value is None else value
    return settings


def build_engine(args: argparse.Namespace, extractor: str) -> Any:
    """The engine the shared engine flags describe, for ``extractor`` (content or sd-dino)."""
    from annotator.cli.common import engine_from_args

    return engine_from_args(argparse.Namespace(**{**vars(args), "extractor": extractor}))


def _alpha(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"alpha must be in (0, 1], got {text}")
    return value


def add_parser(subparsers: Any) -> None:
    """Register the ``eval`` and ``geometry`` subcommands."""
    p = subparsers.add_parser(
        "eval", help="PCK benchmark on SPair-71k, PF-Pascal, TSS or a COCO keypoint file",
        description="Transfer every source keypoint of every pair and report PCK (Markdown, "
                    "JSON and a PCK-vs-alpha PNG in --out).")
    p.add_argument("dataset", choices=DATASETS,
                   help="a benchmark, or labelled: your own labelled data (SOURCE)")
    p.add_argument("source", nargs="?", type=Path, default=None,
                   help="labelled: a project, COCO file, DLC project or any file `convert` "
                        "reads")
    p.add_argument("--root", type=Path, default=None,
                   help="dataset folder (SPair-71k, PF-dataset-PASCAL, TSS_CVPR2016); for coco "
                        "the image folder (default: the annotation file's folder)")
    p.add_argument("--annotations", type=Path, default=None, help="COCO keypoint JSON (coco)")
    p.add_argument("--split", default="test", help="test (default), val, or trn for SPair")
    p.add_argument("--categories", nargs="+", default=None, help="only these categories")
    p.add_argument("--limit", type=int, default=None,
                   help="at most N pairs, taken round-robin over categories")
    p.add_argument("--alpha", dest="alphas", type=_alpha, nargs="+", default=None,
                   help="alphas of the tables (default: the protocol's)")
    p.add_argument("--rule", choices=("lt", "le"), default=None,
                   help="correct when error < (lt) or <= (le) alpha * L (default: the "
                        "reference code's: lt for SPair/PF-Pascal/COCO, le for TSS)")
    p.add_argument("--tss-stride", type=int, default=1,
                   help="TSS: score foreground pixels on this stride grid (1 = all)")
    p.add_argument("--coco-threshold", choices=("bbox", "image"), default="bbox")
    p.add_argument("--crop", choices=("none", "bbox"), default="none",
                   help="bbox: transfer between crops around the source and target instance "
                        "boxes (SPair-71k, COCO); none (default): whole images")
    p.add_argument("--crop-margin", type=float, default=0.15,
                   help="crop = box enlarged by this fraction of its size per side")
    p.add_argument("--out", type=Path, default=None, help="report folder (default eval-<dataset>)")
    from annotator.cli.eval_labelled import add_labelled_arguments

    add_labelled_arguments(p)
    add_engine_arguments(p)
    add_ray_arguments(p)
    p.set_defaults(func=run_eval)

    g = subparsers.add_parser(
        "geometry", help="PCK on scikit-image photos warped by known transforms (no download)",
        description="Similarity, perspective and mirror warps of scikit-image photographs. The "
                    "content descriptor always runs; SD+DINOv2 too when weights are given "
                    "(--sd-model and --dino-model, or --extractor sd-dino).")
    g.add_argument("--pairs", type=int, default=1, help="pairs per photo and transform")
    g.add_argument("--keypoints", type=int, default=20)
    g.add_argument("--max-side", type=int, default=384)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--images", nargs="+", default=None, help="scikit-image data names")
    g.add_argument("--alpha", dest="alphas", type=_alpha, nargs="+", default=None)
    g.add_argument("--out", type=Path, default=Path("eval-geometry"))
    g.add_argument("--small-objects", action="store_true",
                   help="the small-objects case: photos pasted small into large canvases "
                        "(several per canvas, some mirrored); PCK of whole-image vs crop "
                        "transfer (use --flip for the mirrored pairs)")
    g.add_argument("--crop-margin", type=float, default=0.15,
                   help="small objects: crop = box enlarged by this fraction per side")
    g.add_argument("--presets", default=None,
                   help="comma-separated presets to report side by side, or 'all' (paper, fast, "
                        "geoaware, diy); each backend runs once per preset (default: --preset)")
    add_engine_arguments(g)
    # content always runs; sd-dino when asked (--extractor sd-dino) or given both model paths
    g.set_defaults(func=run_geometry, extractor=None)


def load_dataset(args: argparse.Namespace) -> Any:
    from annotator.io import datasets as ds

    kind = args.dataset
    if kind == "coco":
        if args.annotations is None:
            raise ValueError("eval coco needs --annotations FILE (and --root IMAGE_FOLDER)")
        return ds.load_coco_pairs(args.annotations, args.root, threshold=args.coco_threshold,
                                  categories=args.categories)
    if args.root is None:
        raise ValueError(f"eval {kind} needs --root DATASET_FOLDER")
    if kind == "spair":
        return ds.load_spair(args.root, args.split, args.categories)
    if kind == "pfpascal":
        data = ds.load_pfpascal(args.root, args.split)
    else:
        data = ds.load_tss(args.root, stride=args.tss_stride)
    if args.categories:
        keep = set(args.categories)
        data = type(data)(data.name, data.root, tuple(r for r in data.records
                                                      if r.category in keep),
                          data.protocol, data.split)
    return data


def _print_summary(results: dict[str, Any], files: Any) -> None:
    for label, res in results.items():
        st = res.table.overall
        _say(f"{label}: {res.dataset} {st.num_pairs} pairs, {st.num_points} points, rule "
             f"{'<' if res.rule == 'lt' else '<='}")
        for a, kp, im in zip(res.alphas, st.per_keypoint, st.per_image):
            _say(f"  PCK@{a:g}: per-keypoint {100 * kp:.2f}  per-image {100 * im:.2f}")
    _say(f"report: {files.markdown}\n        {files.json}\n        {files.plot}")


def run_eval(args: argparse.Namespace) -> int:
    """Handler of ``annotator eval``; returns the exit status."""
    if args.dataset == "labelled":
        from annotator.cli.eval_labelled import run_labelled

        return run_labelled(args)
    from annotator.io.datasets import DatasetFormatError
    from annotator.jobs.evaluate import EvalConfig, engine_predictor, evaluate
    from annotator.jobs.progress import Cancelled
    from annotator.jobs.report import write_report

    try:
        dataset = load_dataset(args)
        config = EvalConfig(alphas=tuple(args.alphas) if args.alphas else None, rule=args.rule,
                            limit=args.limit)
    except (DatasetFormatError, ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"annotator eval: {exc}\n")
        return 2
    _say(f"{dataset.name} ({dataset.split}): {len(dataset)} pairs"
         + (f", evaluating {min(args.limit, len(dataset))}" if args.limit else ""))
    try:
        engine = build_engine(args, args.extractor)
    except (ImportError, OSError, ValueError, SystemExit) as exc:
        sys.stderr.write(f"annotator eval: cannot build the {args.extractor} engine: {exc}\n")
        return 3
    progress = TqdmProgress(dataset.name)
    predictor = engine_predictor(engine)
    settings = {**_engine_settings(args, args.extractor), "crop": args.crop}
    if args.crop == "bbox":
        from annotator.jobs.evaluate import CropPredictor

        predictor = CropPredictor(predictor, args.crop_margin)
        settings["crop_margin"] = args.crop_margin
    try:
        if args.ray:  # the pairs spread over Ray actors, scored by the same code
            if args.crop != "none":
                raise ValueError("--crop bbox is not supported with --ray yet; run it locally")
            progress.close()
            result = _evaluate_on_ray(args, dataset, config,
                                      {**settings, "ray": args.ray, "actors": args.actors})
        else:
            result = evaluate(dataset, predictor, config, progress=progress, settings=settings)
    except (DatasetFormatError, ValueError) as exc:
        sys.stderr.write(f"annotator eval: {exc}\n")
        return 2
    except (KeyboardInterrupt, Cancelled):
        sys.stderr.write("annotator eval: cancelled\n")
        return 130
    finally:
        progress.close()
    for line in result.skipped:
        sys.stderr.write(f"annotator eval: skipped pair {line}\n")
    if result.skipped:
        _say(f"{len(result.skipped)} pair(s) skipped: an image could not be read")
    out = args.out or Path(f"eval-{args.dataset}")
    files = write_report({"ours": result}, out)
    _print_summary({"ours": result}, files)
    return 0


def _evaluate_on_ray(args: argparse.Namespace, dataset: Any, config: Any,
                     settings: dict[str, Any]) -> Any:
    """``evaluate`` with the pairs scored on Ray actors; a pair that fails is left out of the
    scores and listed in the result's ``skipped`` (named on stderr like unreadable pairs)."""
    import time

    from annotator.cli.cluster import Bar, cluster_options, engine_factory
    from annotator.jobs.cluster import ClusterError, run_eval
    from annotator.jobs.evaluate import eval_alphas, summarize

    alphas, curve, rule = eval_alphas(dataset, config)
    start = time.perf_counter()
    samples = [record.load() for record in dataset.limited(config.limit).records]
    bar = Bar(len(samples), dataset.name)
    outcomes = []
    try:
        for outcome in run_eval(samples, engine_factory(args), alphas + curve, rule,
                                cluster_options(args)):
            outcomes.append(outcome)
            bar.update(outcome.error is None)
    except ClusterError as exc:
        raise SystemExit(f"annotator eval: {exc}") from None
    finally:
        bar.close()
    outcomes.sort(key=lambda o: o.index)
    scores = [o.score for o in outcomes if o.error is None]
    failed = [f"{o.pair_id}: {o.error}" for o in outcomes if o.error is not None]
    return summarize(dataset, scores, config, time.perf_counter() - start, settings, failed)


def run_geometry(args: argparse.Namespace) -> int:
    """Handler of ``annotator geometry``; returns the exit status."""
    from annotator.cli.common import PRESET_NAMES
    from annotator.jobs.evaluate import EvalConfig, engine_predictor
    from annotator.jobs.geometry import SKIMAGE_PHOTOS, GeometryConfig, run_geometry_benchmark

    backends = ["content"]
    if args.extractor == "sd-dino" or (args.sd_model and args.dino_model):
        backends.append("sd-dino")
    if getattr(args, "small_objects", False):
        return _run_small_objects(args, backends)
    presets: list[str | None] = [None]
    if getattr(args, "presets", None):
        presets = list(PRESET_NAMES) if args.presets.strip() == "all" else \
            [p.strip() for p in args.presets.split(",") if p.strip()]
        unknown = [p for p in presets if p not in PRESET_NAMES]
        if unknown or not presets:
            sys.stderr.write(f"annotator geometry: unknown presets {unknown}; choose from "
                             f"{', '.join(PRESET_NAMES)} or all\n")
            return 2
    try:
        gconfig = GeometryConfig(images=tuple(args.images or SKIMAGE_PHOTOS),
                                 pairs_per_image=args.pairs, keypoints=args.keypoints,
                                 max_side=args.max_side, seed=args.seed)
        econfig = EvalConfig(alphas=tuple(args.alphas) if args.alphas else None)
        predictors, settings = {}, {}
        for preset_name in presets:
            run_args = argparse.Namespace(**{**vars(args), "preset": preset_name or args.preset})
            for name in backends:
                label = name if preset_name is None else f"{name}:{preset_name}"
                predictors[label] = engine_predictor(build_engine(run_args, name))
                settings[label] = _engine_settings(run_args, name)
    except (ImportError, OSError, ValueError, SystemExit) as exc:
        sys.stderr.write(f"annotator geometry: {exc}\n")
        return 2
    return _run_and_report(
        args.out, "geometry", lambda progress: run_geometry_benchmark(
            predictors, gconfig, econfig, progress=progress, settings=settings),
        "Geometry benchmark (known warps of scikit-image photographs)")


def _run_and_report(out: Path, stem: str, run: Any, title: str) -> int:
    """Run ``run(progress)`` (label -> result) under a progress bar, write the report named
    ``stem`` in ``out`` and print the summary; 130 when cancelled with Ctrl-C."""
    from annotator.jobs.report import write_report

    progress = TqdmProgress(stem.replace("_", " "))
    try:
        results = run(progress)
    except KeyboardInterrupt:
        sys.stderr.write("annotator geometry: cancelled\n")
        return 130
    finally:
        progress.close()
    files = write_report(results, out, title=title, references=(), stem=stem)
    _print_summary(results, files)
    return 0


def _run_small_objects(args: argparse.Namespace, backends: list[str]) -> int:
    """``annotator geometry --small-objects``: whole-image vs crop transfer per backend."""
    from annotator.jobs.evaluate import EvalConfig, engine_predictor
    from annotator.jobs.geometry import (
        SKIMAGE_PHOTOS,
        SmallObjectsConfig,
        run_small_objects_benchmark,
    )

    try:
        config = SmallObjectsConfig(images=tuple(args.images or SKIMAGE_PHOTOS),
                                    pairs_per_image=max(args.pairs, 1), seed=args.seed)
        econfig = EvalConfig(alphas=tuple(args.alphas) if args.alphas else None)
        engines = {name: build_engine(args, name) for name in backends}
    except (ImportError, OSError, ValueError, SystemExit) as exc:
        sys.stderr.write(f"annotator geometry: {exc}\n")
        return 2

    def run(progress: TqdmProgress) -> dict[str, Any]:
        return {f"{name}, {mode}": res for name, engine in engines.items()
                for mode, res in run_small_objects_benchmark(
                    engine_predictor(engine), config, econfig, args.crop_margin,
                    progress=progress, settings=_engine_settings(args, name)).items()}

    return _run_and_report(args.out, "small_objects", run,
                           "Geometry benchmark: small objects (photos pasted small into large "
                           "canvases), whole-image vs crop transfer")
