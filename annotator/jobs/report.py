"""Benchmark reports: a Markdown table, a JSON file and a PCK-versus-alpha plot (PNG).

One report holds one or more labelled runs (``{"ours": result}`` for ``annotator eval``, one per
backend for the geometry benchmark). The published reference figures (DESIGN.md section 4) are
printed beside ours with their protocol, so like is compared with like.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from annotator.jobs.evaluate import EvalResult
from annotator.jobs.pck import RULE_TEXT, PCKStats


@dataclass(frozen=True)
class ReferenceFigure:
    """A published number: ``pck`` (percent) at ``alpha`` under ``protocol``."""

    method: str
    alpha: float
    pck: float
    protocol: str  # "per-keypoint" or "per-image"
    note: str = ""


SPAIR_REFERENCES = (
    ReferenceFigure("DINOv2-B/14", 0.1, 55.6, "per-keypoint", "zero-shot (sd-dino paper)"),
    ReferenceFigure("DIFT", 0.1, 57.7, "per-keypoint", "zero-shot (sd-dino paper)"),
    ReferenceFigure("SD+DINO fused", 0.1, 64.0, "per-keypoint", "zero-shot (sd-dino paper)"),
    ReferenceFigure("GeoAware-SC", 0.1, 65.4, "per-image", "zero-shot (GeoAware-SC paper)"),
)
REFERENCE_FIGURES: dict[str, tuple[ReferenceFigure, ...]] = {"SPair-71k": SPAIR_REFERENCES}


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    json: Path
    plot: Path


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _alpha_head(alphas: Sequence[float]) -> str:
    return " | ".join(f"PCK@{a:g}" for a in alphas)


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _stats_rows(label: str, st: PCKStats, cat_mean: Sequence[float] | None) -> list[str]:
    rows = [_row([label, "per-keypoint (pooled)", *map(_pct, st.per_keypoint)]),
            _row([label, "per-image", *map(_pct, st.per_image)])]
    if cat_mean is not None:
        rows.append(_row([label, "category mean", *map(_pct, cat_mean)]))
    return rows


def _nearest(values: Sequence[float], alphas: Sequence[float], alpha: float) -> float | None:
    for a, v in zip(alphas, values):
        if math.isclose(a, alpha, rel_tol=0, abs_tol=1e-9):
            return v
    return None


def render_markdown(results: Mapping[str, EvalResult], title: str,
                    references: Sequence[ReferenceFigure] = ()) -> str:
    """The Markdown report for labelled runs (all runs share one dataset and alpha list)."""
    first = next(iter(results.values()))
    alphas = first.alphas
    lines = [f"# {title}", ""]
    lines += [f"- Dataset: {first.dataset} (split: {first.split}); pairs evaluated: "
              f"{first.table.overall.num_pairs} of {first.total_pairs}; keypoints: "
              f"{first.table.overall.num_points}.",
              f"- Threshold: {first.protocol.threshold}.",
              f"- A point is correct when {RULE_TEXT[first.rule]}; {first.protocol.note}. "
              "Points not found count as wrong.",
              "- per-keypoint = correct points / all points over all pairs (pooled); per-image ="
              " mean over pairs of each pair's PCK; category mean = unweighted mean over "
              "categories of their per-keypoint PCK.", ""]
    for label, res in results.items():
        if res.settings:
            settings = ", ".join(f"{k}={v}" for k, v in res.settings.items())
            lines.append(f"- Settings ({label}): {settings}; time {res.elapsed_s:.1f} s.")
    lines += ["", "## Overall", "", _row(["run", "average", *[f"PCK@{a:g}" for a in alphas]]),
              _row(["---"] * (2 + len(alphas)))]
    for label, res in results.items():
        lines += _stats_rows(label, res.table.overall, res.table.category_mean)
    if references:
        lines += ["", "## Published reference figures", "",
                  "| method | protocol | alpha | published | ours (same protocol) | note |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for ref in references:
            ours = []
            for label, res in results.items():
                st = res.table.overall
                vals = st.per_image if ref.protocol == "per-image" else st.per_keypoint
                v = _nearest(vals, res.alphas, ref.alpha)
                if v is None:
                    v = _nearest(res.curve.overall.per_image if ref.protocol == "per-image"
                                 else res.curve.overall.per_keypoint, res.curve_alphas, ref.alpha)
                ours.append(f"{label}: {_pct(v) if v is not None else 'n/a'}")
            lines.append(_row([ref.method, ref.protocol, f"{ref.alpha:g}", f"{ref.pck:.1f}",
                               "; ".join(ours), ref.note]))
    for label, res in results.items():
        lines += ["", f"## Per category ({label})", "",
                  _row(["category", "pairs", "keypoints",
                        *[f"per-kp @{a:g}" for a in alphas],
                        *[f"per-img @{a:g}" for a in alphas]]),
                  _row(["---"] * (3 + 2 * len(alphas)))]
        for cat, st in res.table.per_category.items():
            lines.append(_row([cat, st.num_pairs, st.num_points, *map(_pct, st.per_keypoint),
                               *map(_pct, st.per_image)]))
    lines.append("")
    return "\n".join(lines)


def _finite(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _stats_json(st: PCKStats) -> dict[str, Any]:
    return {"per_keypoint": [_finite(v) for v in st.per_keypoint],
            "per_image": [_finite(v) for v in st.per_image],
            "num_pairs": st.num_pairs, "num_points": st.num_points}


def result_to_json(res: EvalResult) -> dict[str, Any]:
    """A JSON-serialisable dict of one run (fractions in [0, 1], null for undefined)."""
    return {
        "dataset": res.dataset, "split": res.split, "protocol": asdict(res.protocol),
        "rule": res.rule, "rule_text": RULE_TEXT[res.rule], "alphas": list(res.alphas),
        "total_pairs": res.total_pairs, "elapsed_s": res.elapsed_s,
        "settings": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                     for k, v in res.settings.items()},
        "overall": _stats_json(res.table.overall),
        "category_mean": [_finite(v) for v in res.table.category_mean],
        "per_category": {c: _stats_json(st) for c, st in res.table.per_category.items()},
        "curve": {"alphas": list(res.curve_alphas), **_stats_json(res.curve.overall)},
        "pairs": [{"pair_id": s.pair_id, "category": s.category, "num_points": s.num_points,
                   "num_found": s.num_found, "correct": list(s.correct),
                   "threshold_length": s.norm_length, "mean_error_px": _finite(s.mean_error)}
                  for s in res.scores],
    }


def plot_pck_curve(results: Mapping[str, EvalResult], path: str | Path, title: str) -> Path:
    """PCK (percent) versus alpha, per-keypoint (solid) and per-image (dashed) for each run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot, no global backend
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, res) in enumerate(results.items()):
        color = f"C{i}"
        ax.plot(res.curve_alphas, [100 * v for v in res.curve.overall.per_keypoint], "-",
                color=color, label=f"{label} per-keypoint")
        ax.plot(res.curve_alphas, [100 * v for v in res.curve.overall.per_image], "--",
                color=color, label=f"{label} per-image")
    first = next(iter(results.values()))
    for ref in REFERENCE_FIGURES.get(first.dataset, ()):
        marker = "o" if ref.protocol == "per-keypoint" else "s"
        ax.plot([ref.alpha], [ref.pck], marker, color="gray", alpha=0.7)
        ax.annotate(f"{ref.method} {ref.pck:.1f}", (ref.alpha, ref.pck), fontsize=7,
                    xytext=(4, 2), textcoords="offset points", color="dimgray")
    ax.set_xlabel("alpha (threshold / L)")
    ax.set_ylabel("PCK (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0, max(first.curve_alphas) if first.curve_alphas else 0.3)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def write_report(results: Mapping[str, EvalResult] | EvalResult, out_dir: str | Path, *,
                 title: str | None = None, stem: str = "report",
                 references: Sequence[ReferenceFigure] | None = None,
                 extra: Mapping[str, Any] | None = None) -> ReportFiles:
    """Write ``<stem>.md``, ``<stem>.json`` and ``<stem>_pck.png`` into ``out_dir``.

    ``references`` default to the published figures for the dataset (none for most)."""
    if isinstance(results, EvalResult):
        results = {"ours": results}
    if not results:
        raise ValueError("no results to report")
    first = next(iter(results.values()))
    title = title or f"PCK on {first.dataset} ({first.split})"
    if references is None:
        references = REFERENCE_FIGURES.get(first.dataset, ())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{stem}.md"
    md.write_text(render_markdown(results, title, references), encoding="utf-8")
    payload = {"title": title, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "python": platform.python_version(),
               "references": [asdict(r) for r in references],
               "runs": {label: result_to_json(r) for label, r in results.items()},
               **dict(extra or {})}
    js = out / f"{stem}.json"
    js.write_text(json.dumps(payload, indent=1, allow_nan=False), encoding="utf-8")
    png = plot_pck_curve(results, out / f"{stem}_pck.png", title)
    return ReportFiles(md, js, png)
