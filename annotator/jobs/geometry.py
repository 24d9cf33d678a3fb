"""Geometry benchmark: real photographs warped by known transforms, keypoints with exact answers.

No download needed: the photographs are scikit-image's bundled data images. Each pair is a
photograph (longest side ``max_side``) and its warp by a random similarity, perspective or
mirror (horizontal flip composed with a mild similarity) transform H (3 x 3, pixel centres at
integer coordinates, 0-indexed). Keypoints are sampled on textured pixels whose image under H
lies inside the target with a margin; their ground truth is H applied to them. Errors in the
pipeline's coordinate handling (letterbox, cell centres, flips) show up directly as PCK.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotator.io.datasets import EvalProtocol, PairDataset, PairRecord, PairSample
from annotator.jobs.evaluate import EvalConfig, EvalResult, Predictor, evaluate

log = logging.getLogger(__name__)

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera")
TRANSFORMS = ("similarity", "perspective", "mirror")
GEOMETRY_PROTOCOL = EvalProtocol(
    "geometry", (0.01, 0.02, 0.05, 0.1), "lt", "alpha * max(H, W) of the target image",
    "same comparison as the SPair-71k reference code: error < threshold")


@dataclass(frozen=True)
class GeometryConfig:
    """Which photographs and transforms, how many pairs and points, and the random seed."""

    images: tuple[str, ...] = SKIMAGE_PHOTOS
    transforms: tuple[str, ...] = TRANSFORMS
    pairs_per_image: int = 1
    keypoints: int = 20
    max_side: int = 384
    margin: int = 12
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [t for t in self.transforms if t not in TRANSFORMS]
        if bad:
            raise ValueError(f"unknown transforms {bad}; choose from {TRANSFORMS}")
        if self.pairs_per_image < 1 or self.keypoints < 1 or self.max_side < 32:
            raise ValueError("pairs_per_image and keypoints must be >= 1 and max_side >= 32")


def load_photo(name: str, max_side: int) -> np.ndarray:
    """A scikit-image data photograph as (H, W, 3) uint8 with longest side ``max_side``."""
    import cv2
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ValueError(f"scikit-image has no data image {name!r}")
    img = np.asarray(loader())
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3]).astype(np.uint8)
    scale = max_side / max(img.shape[:2])
    if scale != 1:
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return img


def _about_centre(m: np.ndarray, w: int, h: int) -> np.ndarray:
    c = np.array([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]], dtype=np.float64)
    return c @ m @ np.linalg.inv(c)


def random_similarity(rng: np.random.Generator, w: int, h: int, max_angle: float = 30.0,
                      scale: tuple[float, float] = (0.75, 1.25), shift: float = 0.05) -> np.ndarray:
    """Rotation, isotropic scale and shift about the image centre (3, 3)."""
    a = np.deg2rad(rng.uniform(-max_angle, max_angle))
    s = rng.uniform(*scale)
    tx, ty = rng.uniform(-shift, shift, 2) * (w, h)
    m = np.array([[s * np.cos(a), -s * np.sin(a), tx], [s * np.sin(a), s * np.cos(a), ty],
                  [0, 0, 1]])
    return _about_centre(m, w, h)


def random_perspective(rng: np.random.Generator, w: int, h: int, jitter: float = 0.15
                       ) -> np.ndarray:
    """Homography moving each image corner by up to ``jitter`` of the image size (3, 3)."""
    import cv2

    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float32)
    dst = src + rng.uniform(-jitter, jitter, (4, 2)).astype(np.float32) * np.float32([w, h])
    return cv2.getPerspectiveTransform(src, dst).astype(np.float64)


def mirror(w: int) -> np.ndarray:
    """Horizontal flip with pixel centres at integers: x' = (w - 1) - x (3, 3)."""
    return np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]])


def apply_homography(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points (K, 2) by a 3 x 3 homography."""
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    p = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ np.asarray(h, dtype=np.float64).T
    return p[:, :2] / p[:, 2:3]


def make_transform(kind: str, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    if kind == "similarity":
        return random_similarity(rng, w, h)
    if kind == "perspective":
        return random_perspective(rng, w, h)
    if kind == "mirror":
        return random_similarity(rng, w, h, max_angle=10, scale=(0.9, 1.1), shift=0.03) @ mirror(w)
    raise ValueError(f"unknown transform {kind!r}")


def sample_keypoints(image: np.ndarray, hom: np.ndarray, k: int, margin: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` integer pixel positions (K, 2) on textured pixels (gradient magnitude above
    the 60th percentile) whose image under ``hom`` lies ``margin`` pixels inside the frame."""
    import cv2

    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    mag = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    h, w = gray.shape
    ys, xs = np.mgrid[margin:h - margin, margin:w - margin]
    pts = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    keep = mag[ys.ravel(), xs.ravel()] > np.percentile(mag, 60)
    mapped = apply_homography(hom, pts)
    keep &= ((mapped[:, 0] >= margin) & (mapped[:, 0] <= w - 1 - margin)
             & (mapped[:, 1] >= margin) & (mapped[:, 1] <= h - 1 - margin))
    cand = pts[keep]
    if len(cand) == 0:
        return np.zeros((0, 2))
    return cand[np.sort(rng.choice(len(cand), size=min(k, len(cand)), replace=False))]


def make_geometry_dataset(config: GeometryConfig | None = None) -> PairDataset:
    """The benchmark pairs (in memory); category = transform kind."""
    import cv2

    config = config or GeometryConfig()
    rng = np.random.default_rng(config.seed)
    records = []
    for name in config.images:
        photo = load_photo(name, config.max_side)
        h, w = photo.shape[:2]
        for kind in config.transforms:
            for i in range(config.pairs_per_image):
                hom = make_transform(kind, rng, w, h)
                warped = cv2.warpPerspective(photo, hom, (w, h), flags=cv2.INTER_LINEAR,
                                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                src = sample_keypoints(photo, hom, config.keypoints, config.margin, rng)
                sample = PairSample(f"{name}/{kind}/{i}", kind, photo, warped, src,
                                    apply_homography(hom, src), float(max(w, h)),
                                    {"homography": hom.tolist(), "image": name})
                records.append(PairRecord(sample.pair_id, kind, lambda s=sample: s))
    return PairDataset("geometry (scikit-image photos)", None, tuple(records), GEOMETRY_PROTOCOL,
                       f"seed {config.seed}")


def run_geometry_benchmark(predictors: Mapping[str, Predictor],
                           config: GeometryConfig | None = None,
                           eval_config: EvalConfig | None = None, *, progress: Any = None,
                           settings: Mapping[str, Mapping[str, Any]] | None = None
                           ) -> dict[str, EvalResult]:
    """Evaluate every backend on the same geometry pairs; returns ``{backend: result}``."""
    dataset = make_geometry_dataset(config)
    results = {}
    for name, predictor in predictors.items():
        log.info("geometry benchmark: backend %s on %d pairs", name, len(dataset))
        results[name] = evaluate(dataset, predictor, eval_config, progress=progress,
                                 settings=(settings or {}).get(name, {"backend": name}))
    return results


def oracle_predictor(dataset: PairDataset) -> Predictor:
    """A predictor that answers from the known transforms (for testing the harness); it looks
    pairs up by image content and source points, so it works on a regenerated dataset too."""
    table = {}
    for record in dataset.records:
        s = record.load()
        key = (hash(np.asarray(s.trg_image).tobytes()), s.src_kps.tobytes())
        table[key] = np.asarray(s.meta["homography"])

    def predict(src: np.ndarray, trg: np.ndarray, kps: np.ndarray) -> np.ndarray:
        key = (hash(trg.tobytes()), np.asarray(kps, dtype=np.float64).tobytes())
        return apply_homography(table[key], kps)

    return predict


def describe(config: GeometryConfig) -> Sequence[str]:
    return (f"photos: {', '.join(config.images)}", f"transforms: {', '.join(config.transforms)}",
            f"{config.pairs_per_image} pair(s) per photo and transform, {config.keypoints} "
            f"keypoints each, longest side {config.max_side}, seed {config.seed}")
