"""``annotator eval labelled SOURCE``: accuracy of propagation on your own labelled data."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any


def add_labelled_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("labelled (eval labelled SOURCE)")
    g.add_argument("--references", default="5",
                   help="how many reference images, spread over the labelled ones (default "
                        "5), or a comma-separated list of image paths or file names")
    g.add_argument("--boxes", choices=("labels", "auto", "none"), default=None,
                   help="target boxes: labels (the labelled keypoints' box), auto (found from "
                        "the references; default) or none (whole images)")
    g.add_argument("--max-targets", type=int, default=None,
                   help="predict at most N labelled images, spread over the rest")
    g.add_argument("--combine", choices=("prototype", "best"), default=None,
                   help="several references: prototype (mean descriptor per keypoint; "
                        "default) or best (most confident reference wins)")
    g.add_argument("--prior-weight", type=float, default=None,
                   help="weight of the box-normalised spatial prior (0 = off; default: the "
                        "project's)")
    g.add_argument("--crop-canvas", choices=("auto", "preset"), default=None,
                   help="canvas of crop transfer: auto (large reference crops at the fast "
                        "preset's 448 px, same models; default) or preset")
    g.add_argument("--learn", action="store_true",
                   help="train the learned keypoint head on the references and use it, as "
                        "propagation does once images are reviewed")
    g.add_argument("--simulate-review", action="store_true",
                   help="simulate a person finishing the set: worst image first, correct "
                        "every point beyond --tolerance, accept, propagate/retrain every "
                        "--every images; reports corrections against labelling by hand, with "
                        "and without the learned head")
    g.add_argument("--tolerance", type=float, default=0.1,
                   help="simulate-review: a point farther than this x its keypoint box's "
                        "longest side is corrected (default 0.1)")
    g.add_argument("--every", type=int, default=10,
                   help="simulate-review: propagate and retrain after this many accepted "
                        "images (default 10)")
    g.add_argument("--max-images", type=int, default=None,
                   help="simulate-review: stop after this many images")


def settings_from_args(settings: Any, args: argparse.Namespace) -> Any:
    """The project's settings overridden by the engine flags that were given."""
    changes: dict[str, Any] = {}
    for field, value in (("sd_model", args.sd_model), ("dino_model", args.dino_model),
                         ("preset", args.preset), ("fusion", args.fusion),
                         ("flip", args.flip), ("soft_argmax", args.soft_argmax),
                         ("sd_unet", getattr(args, "sd_unet", None)),
                         ("diy_checkpoint", getattr(args, "diy_checkpoint", None)),
                         ("cache_dir", args.cache_dir), ("combine", args.combine),
                         ("prior_weight", args.prior_weight),
                         ("crop_canvas", getattr(args, "crop_canvas", None))):
        if value is not None:
            changes[field] = value
    changes["device"], changes["dtype"] = args.device, args.dtype
    changes["cache_cap_gb"] = args.cache_cap_gb
    return replace(settings, **changes)


def run_labelled(args: argparse.Namespace) -> int:
    from annotator.cli.common import tqdm_task_state
    from annotator.io.formats import FormatError, import_dataset
    from annotator.jobs.engine_factory import EngineSettingsError, build_engine, model_load_error
    from annotator.jobs.eval_labelled import (
        LabelledEvalConfig,
        evaluate_labelled,
        plot_pck,
        render_table,
    )
    from annotator.jobs.progress import Cancelled

    def fail(message: str, code: int = 2) -> int:
        sys.stderr.write(f"annotator eval labelled: {message}\n")
        return code

    if args.source is None:
        return fail("name the labelled data: annotator eval labelled PROJECT_OR_FILE")
    if args.extractor != "sd-dino":
        return fail("--extractor content is a geometry check; labelled data needs real "
                    "features")
    refs = args.references.strip()
    try:
        references: int | tuple[str, ...] = int(refs)
    except ValueError:
        references = tuple(r.strip() for r in refs.split(",") if r.strip())
    try:
        project = import_dataset(args.source)
        config = LabelledEvalConfig(references, args.boxes or "auto",
                                    tuple(args.alphas) if args.alphas else (0.05, 0.1, 0.2),
                                    args.max_targets, args.learn)
        settings = settings_from_args(project.settings, args)
    except (FormatError, ValueError, OSError) as exc:
        return fail(str(exc))
    try:
        engine = build_engine(settings, use_cache=not args.no_cache,
                              category=project.schema.name)
    except (ImportError, OSError, EngineSettingsError, ValueError) as exc:
        return fail(f"cannot build the engine: {exc}", 3)
    if args.simulate_review:
        return _simulate(args, project, engine, settings, fail)
    bar, state = tqdm_task_state(0, "eval labelled")
    try:
        result = evaluate_labelled(project, engine, config, state, settings)
    except ValueError as exc:
        return fail(str(exc))
    except (KeyboardInterrupt, Cancelled):
        return fail("cancelled", 130)
    except Exception as exc:  # model loading: a message, not a traceback
        if isinstance(exc, model_load_error()):
            return fail(str(exc), 3)
        raise
    finally:
        bar.close()
    table = render_table(result)
    sys.stdout.write(table + "\n")
    out = args.out or Path("eval-labelled")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(table + "\n")
    doc = {**result.to_json(), "source": str(args.source),
           "settings": {k: getattr(settings, k) for k in (
               "preset", "fusion", "dino_model", "sd_model", "flip", "soft_argmax", "boxes",
               "combine", "prior_weight", "crop_margin", "crop_canvas")}}
    (out / "report.json").write_text(json.dumps(doc, indent=1, default=str))
    plot_pck(result, out / "report_pck.png")
    sys.stdout.write(f"report: {out / 'report.md'}, {out / 'report.json'}, "
                     f"{out / 'report_pck.png'}\n")
    return 0


def _simulate(args: argparse.Namespace, project: Any, engine: Any, settings: Any,
              fail: Any) -> int:
    from annotator.cli.common import tqdm_task_state
    from annotator.jobs.progress import Cancelled
    from annotator.jobs.simulate_review import (
        SimulationConfig,
        plot_simulation,
        render_simulation,
        simulate_review,
    )

    boxes = args.boxes or "labels"
    try:
        runs = {"learned head + transfer": SimulationConfig(args.tolerance, args.every, True,
                                                            boxes, None, args.max_images),
                "zero-shot transfer only": SimulationConfig(args.tolerance, args.every,
                                                            False, boxes, None,
                                                            args.max_images)}
    except ValueError as exc:
        return fail(str(exc))
    results = {}
    try:
        for name, config in runs.items():
            bar, state = tqdm_task_state(0, name)
            try:
                results[name] = simulate_review(project, engine, config, state, settings)
            finally:
                bar.close()
    except ValueError as exc:
        return fail(str(exc))
    except (KeyboardInterrupt, Cancelled):
        return fail("cancelled", 130)
    table = render_simulation(results, args.tolerance)
    sys.stdout.write(f"boxes: {boxes}\n{table}\n")
    out = args.out or Path("eval-labelled")
    out.mkdir(parents=True, exist_ok=True)
    (out / "simulate_review.md").write_text(f"boxes: {boxes}\n\n{table}\n")
    (out / "simulate_review.json").write_text(json.dumps(
        {"source": str(args.source), "boxes": boxes, "tolerance": args.tolerance,
         "every": args.every, **{n: r.to_json() for n, r in results.items()}}, indent=1))
    plot_simulation(results, out / "simulate_review.png")
    sys.stdout.write(f"report: {out / 'simulate_review.md'}, {out / 'simulate_review.json'}, "
                     f"{out / 'simulate_review.png'}\n")
    return 0
