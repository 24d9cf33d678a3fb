"""Several references at once: keypoint prototypes and detector-free object boxes.

Engine-level glue (features through the engine's cache, then the pure tensor functions of
``annotator.matching.prototype`` and ``annotator.matching.localize``):

- :func:`prototype_rule` (or :func:`build_prototypes`) / :func:`prototype_transfer`: each
  keypoint's query is the mean of every reference's descriptor at that keypoint, plus a
  box-normalised spatial prior chosen by leaving each reference out; one match per keypoint
  per target, whatever the number of references.
- :func:`object_model` / :func:`find_boxes`: the labelled reference instances localise the
  same kind of object in a whole target image, by feature similarity, no detector weights.

Descriptors here are pair-independent: the extractor's own, or "concat" when its fusion is the
pair-dependent "copca" (prototypes average descriptors of different images, so they must share
one space).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from annotator.features.crop import Box, ImageCrop

if TYPE_CHECKING:
    import torch

    from annotator.engine import Engine
    from annotator.features.extractor import FeatureMaps
    from annotator.matching.localize import ObjectModel
    from annotator.matching.prototype import PrototypeMatch, Prototypes
    from annotator.matching.transfer import TransferResult

ImageLike = np.ndarray | ImageCrop
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrototypeParams:
    """``prior_weight`` scales the spatial prior's log-density against cosine similarity
    (0: off; see :func:`prototype_rule`); ``prior_min_std`` is added to the references'
    spread (box-normalised units). Box-normalised: relative to the object box a crop was
    framed around (``ImageCrop.box``), else to the whole image."""

    prior_weight: float = 0.05
    prior_min_std: float = 0.1
    review_threshold: float = 0.5
    #: with a prior, a keypoint stays where the references put it in the box unless a cell
    #: is more similar to its prototype by this much (cosine) than the best one within
    #: ``layout_radius`` (of the box's side) of that place; None: the best score wins
    layout_margin: float | None = 0.2
    layout_radius: float = 0.05

    def __post_init__(self) -> None:
        if not (self.prior_weight >= 0 and self.prior_min_std > 0):
            raise ValueError("prior_weight must be >= 0 and prior_min_std > 0")


def _size(image: ImageLike) -> tuple[int, int]:
    px = image if isinstance(image, np.ndarray) else image.pixels
    return int(px.shape[1]), int(px.shape[0])


def shared_descriptor(engine: Engine, maps: FeatureMaps) -> torch.Tensor:
    """(C, G, G) pair-independent descriptor of one image's maps."""
    from annotator.features.extractor import pair_dependent

    extractor = engine.extractor
    if not pair_dependent(extractor):
        return extractor.describe(maps)
    from annotator.features import fusion

    return fusion.fuse("concat", maps.layers, maps.grid)


def _content_mask(maps: FeatureMaps) -> np.ndarray:
    from annotator.matching.transfer import cell_centres

    g = maps.grid
    c = cell_centres(np.arange(g, dtype=np.float64), maps.cell_size)
    xy = np.stack(np.meshgrid(c, c), -1).reshape(-1, 2)
    return maps.letterbox.contains(xy).reshape(g, g)


def _frame(image: ImageLike) -> tuple[float, float, float, float]:
    """(x, y, w, h) in the image's own pixels that box-normalised positions refer to: the
    object box a crop was framed around (``ImageCrop.box``), else the whole image (pixel
    edges at -0.5). Sides of at least one pixel."""
    if isinstance(image, ImageCrop) and image.box is not None:
        x, y, w, h = image.crop_box()
    else:
        (w, h), x, y = _size(image), -0.5, -0.5
    return float(x), float(y), max(float(w), 1.0), max(float(h), 1.0)


def _frame_canvas(maps: FeatureMaps, image: ImageLike) -> tuple[float, float, float, float]:
    """:func:`_frame` in canvas pixels (x0, y0, w, h)."""
    x, y, w, h = _frame(image)
    a = maps.letterbox.to_canvas(np.array([[x, y], [x + w, y + h]]))
    return float(a[0, 0]), float(a[0, 1]), float(a[1, 0] - a[0, 0]), float(a[1, 1] - a[0, 1])


def _match(engine: Engine, protos: Prototypes, maps: FeatureMaps, desc: torch.Tensor,
           frame: tuple[float, float, float, float], params: PrototypeParams
           ) -> PrototypeMatch:
    """The prototype rule on one target (``frame``: its object box in canvas pixels): the
    best cell per keypoint under the spatial prior, then kept at the prior's place unless the
    features clearly disagree (``params.layout_margin``)."""
    from annotator.matching import prototype as proto

    mask = _content_mask(maps)
    prior = None
    if params.prior_weight > 0:
        prior = proto.prior_log_density(protos, frame, maps.grid, maps.cell_size,
                                        params.prior_min_std)
    match = engine.match_params
    m = proto.match_prototypes(protos, desc, maps.cell_size, mask, prior, params.prior_weight,
                               match.soft_window, match.temperature)
    if params.prior_weight > 0 and params.layout_margin is not None:
        radius = params.layout_radius * float(np.sqrt(frame[2] * frame[3]))
        m = proto.keep_layout(protos, desc, m, proto.box_layout(protos, frame),
                              maps.cell_size, radius, params.layout_margin)
    return m


@dataclass(frozen=True)
class _Sample:
    """One reference as the prototype rule sees it."""

    maps: FeatureMaps
    desc: torch.Tensor
    sample: torch.Tensor  # (K, C)
    valid: np.ndarray  # (K,)
    position: np.ndarray  # (K, 2) box-normalised
    points: np.ndarray  # (K, 2) its pixels
    frame: tuple[float, float, float, float]  # its object frame in canvas pixels


def _samples(engine: Engine, references: Sequence[tuple[ImageLike, np.ndarray, np.ndarray]]
             ) -> list[_Sample]:
    from annotator.matching import prototype as proto

    if not references:
        raise ValueError("at least one reference is needed")
    out = []
    for image, points, valid in references:
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        ok = np.asarray(valid, bool).reshape(len(pts)) & np.isfinite(pts).all(axis=1)
        safe = np.where(np.isfinite(pts), pts, 0.0)
        maps = engine.features(image)
        desc = shared_descriptor(engine, maps)
        sample = proto.sample_descriptors(desc, maps.letterbox.to_canvas(safe), maps.cell_size)
        x, y, w, h = _frame(image)
        out.append(_Sample(maps, desc, sample, ok, (safe - (x, y)) / (w, h), safe,
                           _frame_canvas(maps, image)))
    ks = {len(s.sample) for s in out}
    if len(ks) != 1:
        raise ValueError(f"references have different keypoint counts {sorted(ks)}")
    return out


def _prototypes(samples: Sequence[_Sample]) -> Prototypes:
    from annotator.matching import prototype as proto

    return proto.build_prototypes([s.sample for s in samples], [s.valid for s in samples],
                                  [s.position for s in samples])


def build_prototypes(engine: Engine,
                     references: Sequence[tuple[ImageLike, np.ndarray, np.ndarray]]
                     ) -> Prototypes:
    """Prototypes of R references (image or crop, points (K, 2) in its pixels, valid (K,))."""
    return _prototypes(_samples(engine, references))


#: spatial prior weights tried by :func:`prototype_rule`
PRIOR_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2)
#: layout rules tried with each non-zero weight (PrototypeParams.layout_margin)
LAYOUT_MARGINS = (None, 0.2)
#: a non-zero weight must score this much better (relative) than none on the references
PRIOR_MARGIN = 0.15
#: with one reference nothing can be left out: a light prior and the layout rule. Over 33
#: held-out sets (label boxes on both sides, DINOv2-S, paper preset) PCK@0.1 of the box went
#: 16.2 (no prior) -> 31.1 (weight 0.1-0.3) -> 31.8 (weight 0.1 and the layout rule), the box
#: copy 31.1; BENCHMARKS.md "Real images: held-out categories".
ONE_REFERENCE = (0.1, 0.2)


def coarse_engine(engine: Engine) -> Engine | None:
    """``engine`` at the fast preset's resolution (DINOv2 at 448 px, one 512 px SD pass,
    32 x 32 cells), sharing its models; None when it is not finer than that or its models
    cannot be shared (a plugged-in extractor)."""
    from annotator.features.config import FAST

    cfg = getattr(engine, "config", None)  # engine-like objects without one: no choice
    if cfg is None or not hasattr(engine, "with_config") \
            or cfg.canvas_size <= FAST.canvas_size or cfg.grid <= FAST.grid:
        return None
    coarse = cfg.replace(sd_size=FAST.sd_size, sd_tile=FAST.sd_tile,
                         sd_tile_offsets=FAST.sd_tile_offsets, dino_size=FAST.dino_size,
                         grid=FAST.grid)
    return engine.with_config(coarse)


#: reference crops whose median longest side (their own pixels) is at least this share of the
#: coarse canvas are matched at the coarse canvas (:func:`crop_engine`)
LARGE_CROP = 0.5


def crop_engine(engine: Engine, crops: Sequence[ImageLike]) -> Engine:
    """The engine to match crops like ``crops`` (the references' crops) with: ``engine``, or
    its :func:`coarse_engine` when the crops are large (median longest side >= LARGE_CROP x
    the coarse canvas, i.e. 224 px for DINOv2 at 448). Measured with DINOv2-S (BENCHMARKS.md
    "Real images"): objects of 200-300 px (Reaching) are matched better at 448 px than
    upsampled to 840, small ones (openfield's 100-150 px mouse) better at 840."""
    from annotator.features.config import FAST

    if not crops or float(np.median([max(_size(c)) for c in crops])) \
            < LARGE_CROP * FAST.canvas_size:
        return engine
    return coarse_engine(engine) or engine


def prototype_rule(engine: Engine,
                   references: Sequence[tuple[ImageLike, np.ndarray, np.ndarray]],
                   params: PrototypeParams, choose: bool,
                   one_reference: tuple[float, float | None] = ONE_REFERENCE
                   ) -> tuple[Prototypes, PrototypeParams]:
    """Prototypes of ``references`` and the params to transfer them with. With ``choose``,
    the spatial prior weight and layout rule that predict the references themselves best,
    leaving each out in turn (prototypes and prior from the others; hits within 0.05, 0.1 and
    0.2 of its keypoint box, then the weaker rule; a prior must beat none by PRIOR_MARGIN).
    Where objects keep their place and pose in their boxes (a fixed camera and task) the prior
    helps a lot; where they turn freely it misleads. With one reference there is nothing to
    leave out: ``one_reference`` (weight, layout margin) when it is a crop framed by a drawn or
    found object box, else no prior."""
    samples = _samples(engine, references)
    if choose:
        params = _choose(engine, samples, references, params, PRIOR_WEIGHTS, LAYOUT_MARGINS,
                         one_reference)
    return _prototypes(samples), params


def _choose(engine: Engine, samples: Sequence[_Sample],
            references: Sequence[tuple[ImageLike, np.ndarray, np.ndarray]],
            params: PrototypeParams, weights: Sequence[float],
            margins: Sequence[float | None], one_reference: tuple[float, float | None]
            ) -> PrototypeParams:
    if len(samples) < 2:
        # only a box drawn or found around the object frames it as a target's box does
        # (whole images: the prior would copy coordinates; a keypoint box frames it tighter)
        framed = all(isinstance(r[0], ImageCrop) and r[0].box is not None for r in references)
        if not framed:
            return replace(params, prior_weight=0.0, layout_margin=None)
        return replace(params, prior_weight=one_reference[0], layout_margin=one_reference[1])
    rules = [(0.0, None)] + [(w, m) for w in weights if w > 0 for m in margins]
    hits = np.zeros(len(rules))
    for i, s in enumerate(samples):
        others = [o for j, o in enumerate(samples) if j != i]
        protos = _prototypes(others)
        box = s.points[s.valid]
        if len(box) == 0:
            continue
        side = max(float(np.ptp(box[:, 0])), float(np.ptp(box[:, 1])), 1.0)
        for c, (weight, margin) in enumerate(rules):
            m = _match(engine, protos, s.maps, s.desc, s.frame,
                       replace(params, prior_weight=weight, layout_margin=margin))
            pred = s.maps.letterbox.from_canvas(m.canvas)
            ok = s.valid & m.found
            err = np.hypot(*(pred[ok] - s.points[ok]).T)
            hits[c] += sum(float(np.sum(err <= a * side)) for a in (0.05, 0.1, 0.2))
    # a prior is a strong assumption: it must beat no prior clearly on the references (a few
    # dozen points), else none (openfield: 26 against 23 hits for 0.05, yet 8 points lost on
    # its 111 other frames; Reaching: 17 against 13)
    ok = [c for c in range(len(rules)) if c == 0 or hits[c] >= hits[0] * (1 + PRIOR_MARGIN)
          + 1e-9]
    best = max(ok, key=lambda c: (hits[c], -rules[c][0], rules[c][1] is None))
    log.info("prior by leave-one-out: hits %s for (weight, layout margin) %s -> %s",
             hits.tolist(), rules, rules[best])
    return replace(params, prior_weight=rules[best][0], layout_margin=rules[best][1])


def prototype_transfer(engine: Engine, protos: Prototypes, target: ImageLike,
                       params: PrototypeParams | None = None) -> TransferResult:
    """Move every prototype to its best cell of ``target`` (whole image or crop), refined by
    the engine's window soft-argmax when it has one. Confidence = clip(cosine similarity, 0,
    1); ``cycle_error`` is 0 (no single reference to return to); a keypoint no reference
    labelled is not found."""
    from annotator.matching.transfer import TransferResult

    params = params or PrototypeParams()
    maps = engine.features(target)
    m = _match(engine, protos, maps, shared_descriptor(engine, maps),
               _frame_canvas(maps, target), params)
    lb = maps.letterbox
    found = m.found & lb.contains(m.canvas)
    pts = lb.from_canvas(m.canvas)
    pts[:, 0] = np.clip(pts[:, 0], 0, lb.width - 1)
    pts[:, 1] = np.clip(pts[:, 1], 0, lb.height - 1)
    pts[~found] = np.nan
    conf = np.where(found, np.clip(m.similarity, 0.0, 1.0), 0.0)
    k = len(pts)
    return TransferResult(points=pts, similarity=m.similarity, cycle_error=np.zeros(k),
                          confidence=conf, found=found,
                          needs_review=conf < params.review_threshold,
                          reference=np.full(k, -1, np.int64))


# ---- boxes without a detector ---------------------------------------------------------------
#: object cells: the instance box enlarged by this fraction per side; background: content
#: cells outside the box enlarged by BACKGROUND_MARGIN (a ring around the object is neither)
OBJECT_MARGIN = 0.15
BACKGROUND_MARGIN = 1.0


def _canvas_box(maps: FeatureMaps, box: Box, margin: float) -> tuple[float, float, float, float]:
    x, y, w, h = box
    mx, my = w * margin, h * margin
    a = maps.letterbox.to_canvas(np.array([[x - mx - 0.5, y - my - 0.5],
                                           [x + w + mx - 0.5, y + h + my - 0.5]]))
    return float(a[0, 0]), float(a[0, 1]), float(a[1, 0]), float(a[1, 1])


@dataclass(frozen=True)
class ObjectSearch:
    """What :func:`find_boxes` needs: the object/background model, the references' median
    box size relative to their image's longest side, and how many objects an image holds
    (the most instances of any reference image)."""

    model: ObjectModel
    relative_size: tuple[float, float]
    max_objects: int


def object_search(engine: Engine, references: Sequence[tuple[np.ndarray, Sequence[Box]]]
                  ) -> ObjectSearch:
    """Model the labelled object from whole reference images and their instance boxes."""
    from annotator.matching import localize

    descs, objects, backgrounds, sizes = [], [], [], []
    most = 1
    for image, boxes in references:
        boxes = [b for b in boxes if b is not None and b[2] > 0 and b[3] > 0]
        if not boxes:
            continue
        most = max(most, len(boxes))
        maps = engine.features(image)
        g, cell = maps.grid, maps.cell_size
        content = _content_mask(maps)
        obj = localize.cells_in_boxes([_canvas_box(maps, b, OBJECT_MARGIN) for b in boxes],
                                      g, cell) & content
        near = localize.cells_in_boxes([_canvas_box(maps, b, BACKGROUND_MARGIN)
                                        for b in boxes], g, cell)
        descs.append(shared_descriptor(engine, maps))
        objects.append(obj)
        backgrounds.append(content & ~near)
        side = max(image.shape[:2])
        sizes.extend((b[2] / side, b[3] / side) for b in boxes)
    if not descs:
        raise ValueError("no reference instance has a box or two labelled keypoints")
    model = localize.object_model(descs, objects, backgrounds)
    rel = np.median(np.asarray(sizes), axis=0)
    return ObjectSearch(model, (float(rel[0]), float(rel[1])), most)


def find_boxes(engine: Engine, search: ObjectSearch, image: np.ndarray) -> list[Box]:
    """Boxes (x, y, w, h) of the modelled object in ``image``, strongest first (empty when
    nothing scores as object). Each is centred on its region's score-weighted centroid and
    spans the region, at least the references' typical box size (scaled to this image)."""
    from annotator.matching import localize
    from annotator.matching.transfer import cell_centres

    maps = engine.features(image)
    score = localize.object_score(search.model, shared_descriptor(engine, maps))
    found = localize.find_objects(score, _content_mask(maps), maps.cell_size,
                                  search.max_objects)
    h, w = image.shape[:2]
    side = max(w, h)
    lb = maps.letterbox
    centres = cell_centres(np.arange(maps.grid, dtype=np.float64), maps.cell_size)
    out: list[Box] = []
    content = _content_mask(maps)
    top = float(score[content].max()) if content.any() else 0.0
    for f in found:
        region = (localize.cells_in_boxes([f.box], maps.grid, maps.cell_size) & content
                  & (score > 0.5 * top))
        weights = np.where(region, score, 0.0)
        total = weights.sum()
        if not total > 0:
            continue
        cx = float(weights.sum(0) @ centres / total)
        cy = float(weights.sum(1) @ centres / total)
        (px, py), = lb.from_canvas(np.array([[cx, cy]]))
        corners = lb.from_canvas(np.array([[f.box[0], f.box[1]], [f.box[2], f.box[3]]]))
        bw = max(corners[1, 0] - corners[0, 0], search.relative_size[0] * side, 1.0)
        bh = max(corners[1, 1] - corners[0, 1], search.relative_size[1] * side, 1.0)
        x0, y0 = max(px - bw / 2, 0.0), max(py - bh / 2, 0.0)
        x1, y1 = min(px + bw / 2, w - 1.0), min(py + bh / 2, h - 1.0)
        if x1 > x0 and y1 > y0:
            out.append((float(x0), float(y0), float(x1 - x0), float(y1 - y0)))
    return out
