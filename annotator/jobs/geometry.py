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


# ------------------------------------------------------------------ small objects
SMALL_OBJECTS_PROTOCOL = EvalProtocol(
    "geometry: small objects", (0.05, 0.1, 0.2), "lt",
    "alpha * max(h, w) of the target object's box",
    "as SPair-71k (error < alpha * box side); the same pairs are transferred between whole "
    "canvases and between crops around the boxes")


@dataclass(frozen=True)
class SmallObjectsConfig:
    """Photos pasted small into large canvases (DESIGN.md section 10 test case).

    Each pair: a source canvas holding the photo (longest side drawn from ``object_side``)
    among ``objects_per_canvas - 1`` other photos, and a target canvas holding it at another
    size and place among other photos; every ``mirror_every``-th target copy is mirrored.
    Ground truth is exact: resizing and pasting are affine in pixel-centre coordinates.
    """

    images: tuple[str, ...] = SKIMAGE_PHOTOS
    canvas: tuple[int, int] = (1024, 768)
    object_side: tuple[int, int] = (96, 160)
    objects_per_canvas: int = 4
    pairs_per_image: int = 2
    keypoints: int = 15
    mirror_every: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.object_side
        if not 16 <= lo <= hi or self.objects_per_canvas < 1 or self.pairs_per_image < 1:
            raise ValueError("object_side must be 16 <= lo <= hi; counts must be >= 1")
        if self.objects_per_canvas * hi * hi > 0.6 * self.canvas[0] * self.canvas[1]:
            raise ValueError("the objects do not fit the canvas; use a bigger canvas")
        if self.mirror_every < 0:
            raise ValueError("mirror_every must be >= 0 (0: never mirrored)")


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Smooth low-contrast noise (not black: a crop's border is not letterbox padding)."""
    import cv2

    small = rng.uniform(50, 110, (max(2, h // 32), max(2, w // 32), 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255
                   ).astype(np.uint8)


def _place(rng: np.random.Generator, sizes: Sequence[tuple[int, int]], w: int, h: int
           ) -> list[tuple[int, int]]:
    """Top-left corners for non-overlapping rectangles of ``sizes`` (w, h) in a w x h canvas
    (rejection sampling, 8 px apart)."""
    placed: list[tuple[int, int, int, int]] = []
    for bw, bh in sizes:
        for _ in range(1000):
            x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            if all(x + bw + 8 <= px or px + pw + 8 <= x or y + bh + 8 <= py or py + ph + 8 <= y
                   for px, py, pw, ph in placed):
                placed.append((x, y, bw, bh))
                break
        else:
            raise ValueError("cannot place the objects without overlap; use a bigger canvas")
    return [(x, y) for x, y, _, _ in placed]


def _resized(photo: np.ndarray, side: int) -> np.ndarray:
    import cv2

    h, w = photo.shape[:2]
    s = side / max(h, w)
    return cv2.resize(photo, (max(1, round(w * s)), max(1, round(h * s))),
                      interpolation=cv2.INTER_AREA)


def _paste_map(pts: np.ndarray, photo_wh: tuple[int, int], obj_wh: tuple[int, int],
               corner: tuple[int, int], mirrored: bool) -> np.ndarray:
    """Photo pixel coords -> canvas coords of the pasted (resized, maybe mirrored) copy."""
    pw, ph = photo_wh
    ow, oh = obj_wh
    p = np.asarray(pts, dtype=np.float64).copy()
    if mirrored:
        p[:, 0] = pw - 1 - p[:, 0]
    p[:, 0] = (p[:, 0] + 0.5) * ow / pw - 0.5 + corner[0]
    p[:, 1] = (p[:, 1] + 0.5) * oh / ph - 0.5 + corner[1]
    return p


def make_small_objects_dataset(config: SmallObjectsConfig | None = None) -> PairDataset:
    """The small-objects pairs (in memory); category "mirrored" or "same side"; each sample's
    meta carries ``src_bbox`` and ``trg_bbox`` (x, y, w, h), the pasted rectangles."""
    config = config or SmallObjectsConfig()
    rng = np.random.default_rng(config.seed)
    cw, ch = config.canvas
    photos = {name: load_photo(name, 384) for name in config.images}
    records = []
    n = 0
    for name in config.images:
        photo = photos[name]
        others = [o for o in config.images if o != name] or [name]
        for i in range(config.pairs_per_image):
            n += 1
            mirrored = config.mirror_every > 0 and n % config.mirror_every == 0
            canvases, boxes = [], []
            for side_is_target in (False, True):
                sides = rng.integers(config.object_side[0], config.object_side[1] + 1,
                                     config.objects_per_canvas)
                picks = [photo] + [photos[others[int(j)]] for j in
                                   rng.integers(0, len(others), config.objects_per_canvas - 1)]
                objs = [_resized(p, int(s)) for p, s in zip(picks, sides)]
                if side_is_target and mirrored:
                    objs[0] = np.ascontiguousarray(objs[0][:, ::-1])
                corners = _place(rng, [(o.shape[1], o.shape[0]) for o in objs], cw, ch)
                canvas = _background(rng, cw, ch)
                for o, (x, y) in zip(objs, corners):
                    canvas[y:y + o.shape[0], x:x + o.shape[1]] = o
                canvases.append(canvas)
                boxes.append((corners[0], (objs[0].shape[1], objs[0].shape[0])))
            ph, pw = photo.shape[:2]
            kps = sample_keypoints(photo, np.eye(3), config.keypoints, 8, rng)
            (sc, sw), (tc, tw) = boxes
            src = _paste_map(kps, (pw, ph), sw, sc, False)
            trg = _paste_map(kps, (pw, ph), tw, tc, mirrored)
            src_box = (float(sc[0]), float(sc[1]), float(sw[0]), float(sw[1]))
            trg_box = (float(tc[0]), float(tc[1]), float(tw[0]), float(tw[1]))
            kind = "mirrored" if mirrored else "same side"
            sample = PairSample(f"{name}/{i}", kind, canvases[0], canvases[1], src, trg,
                                float(max(tw)), {"src_bbox": src_box, "trg_bbox": trg_box,
                                                 "image": name, "mirrored": mirrored})
            records.append(PairRecord(sample.pair_id, kind, lambda s=sample: s))
    return PairDataset("geometry: small objects (scikit-image photos)", None, tuple(records),
                       SMALL_OBJECTS_PROTOCOL, f"seed {config.seed}")


def run_small_objects_benchmark(predictor: Predictor, config: SmallObjectsConfig | None = None,
                                eval_config: EvalConfig | None = None, margin: float = 0.15,
                                *, progress: Any = None,
                                settings: Mapping[str, Any] | None = None
                                ) -> dict[str, EvalResult]:
    """The same pairs transferred between whole canvases and between box crops:
    ``{"whole image": result, "crop": result}``."""
    from annotator.jobs.evaluate import CropPredictor

    dataset = make_small_objects_dataset(config)
    base = dict(settings or {})
    return {
        "whole image": evaluate(dataset, predictor, eval_config, progress=progress,
                                settings={**base, "crop": "none"}),
        "crop": evaluate(dataset, CropPredictor(predictor, margin), eval_config,
                         progress=progress, settings={**base, "crop": "bbox",
                                                      "crop_margin": margin}),
    }
