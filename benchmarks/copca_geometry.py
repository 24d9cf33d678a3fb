"""copca with one joint PCA basis per run vs per-pair PCA, on the geometry benchmark.

No SD/DINOv2 weights are available, so the layers copca needs come from the weight-free content
descriptor (annotator.features.content, 275 channels on a 32 x 32 grid): s3 = dino = the content
map, s4 = its 2 x 2 average pool, s5 = its 4 x 4 average pool; PCA to ``--pca-dim`` (default 64,
about the paper's 256 of 640-1280 channels in proportion). Three backends on the same pairs:

- ``copca-pair``: the paper's copca, a joint PCA per (source, target) pair (the engine's
  pair-dependent path);
- ``copca-run``: one basis per source image (a "run"), fitted on the source and a sample of
  ``--sample`` of its targets (annotator.features.copca_basis), every image described once;
- ``content``: the content descriptor itself (no PCA), for scale.

Prints PCK per backend and the time per pair of each copca variant's fusion + matching:

    python benchmarks/copca_geometry.py --pairs 4 --sample 4 --out copca-geometry.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from annotator.engine import Engine
from annotator.features.config import preset
from annotator.features.content import ContentExtractor
from annotator.features.copca_basis import RunBasisExtractor, fit_copca_basis
from annotator.features.extractor import FeatureMaps
from annotator.jobs.evaluate import EvalConfig, engine_predictor
from annotator.jobs.geometry import GeometryConfig, make_geometry_dataset, run_geometry_benchmark


class ContentPyramid:
    """The content descriptor as copca's four layers (see the module docstring)."""

    name = "content-pyramid"
    parts_transfer = False

    def __init__(self, pca_dim: int) -> None:
        self.inner = ContentExtractor()
        self.config = preset("fast").replace(fusion="copca", pca_dim=pca_dim,
                                             softargmax_window=0)
        self.pca_dim = pca_dim

    @property
    def fingerprint(self) -> str:
        return f"content-pyramid-{self.inner.fingerprint}"

    def extract(self, images: Sequence[np.ndarray]) -> list[FeatureMaps]:
        out = []
        for m in self.inner.extract(images):
            c = m.layers["content"].float()
            layers = {"s3": c, "dino": c, "s4": F.avg_pool2d(c[None], 2)[0],
                      "s5": F.avg_pool2d(c[None], 4)[0]}
            out.append(FeatureMaps(layers=layers, letterbox=m.letterbox, grid=m.grid))
        return out

    def describe(self, maps: FeatureMaps) -> torch.Tensor:
        from annotator.features import fusion

        return fusion.copca_single(maps.layers, maps.grid, self.pca_dim)

    def describe_pair(self, a: FeatureMaps, b: FeatureMaps) -> tuple[torch.Tensor, torch.Tensor]:
        from annotator.features import fusion

        return fusion.copca_pair(a.layers, b.layers, a.grid, self.pca_dim)


def _key(img: np.ndarray) -> bytes:
    return np.ascontiguousarray(img).tobytes()[:4096] + str(img.shape).encode()


def run_basis_predictor(dataset: Any, pca_dim: int, sample: int, timing: dict[str, float]
                        ) -> Any:
    """Per source image: a basis fitted on the source and up to ``sample`` of its targets
    (the first ones in dataset order), then transfer with every image described once."""
    ext = ContentPyramid(pca_dim)
    by_src: dict[bytes, list[np.ndarray]] = {}
    for rec in dataset.records:
        s = rec.load()
        by_src.setdefault(_key(s.src_image), [s.src_image]).append(s.trg_image)
    engines: dict[bytes, Engine] = {}

    def predict(src: np.ndarray, trg: np.ndarray, kps: np.ndarray) -> np.ndarray:
        k = _key(src)
        if k not in engines:
            t = time.perf_counter()
            imgs = by_src[k][: 1 + sample]
            basis = fit_copca_basis([m.layers for m in ext.extract(imgs)], pca_dim)
            timing["fit_seconds"] += time.perf_counter() - t
            timing["fits"] += 1
            wrapped = RunBasisExtractor(ext, basis)
            engines[k] = Engine(config=ext.config, extractor=wrapped)  # type: ignore[arg-type]
        return engine_predictor(engines[k])(src, trg, kps)

    return predict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4, help="pairs per photo and transform")
    ap.add_argument("--keypoints", type=int, default=20)
    ap.add_argument("--pca-dim", type=int, default=64)
    ap.add_argument("--sample", type=int, default=4, help="targets per run basis")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    gcfg = GeometryConfig(pairs_per_image=args.pairs, keypoints=args.keypoints)
    dataset = make_geometry_dataset(gcfg)
    timing = {"fit_seconds": 0.0, "fits": 0}
    pair_ext = ContentPyramid(args.pca_dim)
    content_cfg = preset("fast").replace(softargmax_window=0)
    predictors = {
        "copca-pair": engine_predictor(Engine(config=pair_ext.config,
                                              extractor=pair_ext)),  # type: ignore[arg-type]
        "copca-run": run_basis_predictor(dataset, args.pca_dim, args.sample, timing),
        "content": engine_predictor(Engine(config=content_cfg, extractor=ContentExtractor())),
    }
    seconds = {}
    results = {}
    for name, pred in predictors.items():
        t = time.perf_counter()
        results.update(run_geometry_benchmark({name: pred}, gcfg, EvalConfig()))
        seconds[name] = time.perf_counter() - t
    out: dict[str, Any] = {"pairs": len(dataset), "keypoints": args.keypoints,
                           "pca_dim": args.pca_dim, "sample": args.sample,
                           "seconds": seconds, "basis_fits": timing}
    for name, res in results.items():
        pck = dict(zip(res.table.alphas, res.table.overall.per_keypoint))
        per_cat = {c: dict(zip(res.table.alphas, st.per_keypoint))
                   for c, st in res.table.per_category.items()}
        out[name] = {"pck_per_keypoint": pck, "per_transform": per_cat}
        print(f"{name:11s} {seconds[name]:6.1f} s  PCK " + ", ".join(
            f"@{a:g}: {100 * v:.1f}" for a, v in pck.items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
