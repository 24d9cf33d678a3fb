"""Benchmark datasets in their published layouts: SPair-71k, PF-Pascal, TSS and COCO keypoints.

Every loader returns a :class:`PairDataset`: a list of cheap :class:`PairRecord` entries (one per
ordered image pair) whose :meth:`PairRecord.load` reads the keypoints (and, for TSS, the flow) on
demand and returns a :class:`PairSample`. Images are read later, by the evaluator.

Conventions: all coordinates are pixel coordinates of the original image, 0-indexed, x right,
y down (DESIGN.md section 3). A sample transfers ``src_kps`` from ``src_image`` to
``trg_image``; the prediction is compared with ``trg_kps`` and a point is correct when its error is
below ``alpha * norm_length`` (the comparison, < or <=, is the protocol's ``rule``).

numpy, json and csv only (no torch): this module sits in the io layer.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import permutations
from pathlib import Path
from typing import Any, Literal

import numpy as np

from annotator.io.images import ImageLoadError, load_image, read_size

log = logging.getLogger(__name__)

Rule = Literal["lt", "le"]
ImageRef = Path | np.ndarray

PF_PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
TSS_SUBSETS = ("FG3DCar", "JODS", "PASCAL")
_TSS_CLASS_ALIASES = {"busd": "bus", "bike": "bicycle", "plane": "aeroplane", "suv": "car"}
FLO_MAGIC = 202021.25
FLO_UNKNOWN = 1e9  # Middlebury: |u| or |v| above this marks an unknown flow vector
SPAIR_SPLITS = {"test": "test", "val": "val", "trn": "trn", "train": "trn"}


class DatasetFormatError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the field."""

    def __init__(self, path: str | os.PathLike[str], field: str, problem: str) -> None:
        self.path = Path(path)
        self.field = field
        self.problem = problem
        super().__init__(f"{path}: {field}: {problem}")


@dataclass(frozen=True)
class EvalProtocol:
    """How a dataset is scored: default alphas, the comparison rule and what the threshold is."""

    name: str
    alphas: tuple[float, ...]
    rule: Rule
    threshold: str
    note: str = ""


SPAIR_PROTOCOL = EvalProtocol(
    "SPair-71k", (0.1, 0.05, 0.01), "lt",
    "alpha * max(h, w) of the target bounding box",
    "as the sd-dino reference code (pck_spair_pascal.py): error < threshold")
PFPASCAL_PROTOCOL = EvalProtocol(
    "PF-Pascal", (0.05, 0.1, 0.15), "lt",
    "alpha * max(H, W) of the target image",
    "as the sd-dino reference code (pck_spair_pascal.py): error < threshold")
TSS_PROTOCOL = EvalProtocol(
    "TSS", (0.05, 0.1, 0.15), "le",
    "alpha * max(H, W) of the image the foreground pixels are transferred into",
    "as the sd-dino / GLU-Net reference code (pck_tss.py): error <= threshold, over all "
    "foreground pixels of the flow's reference image")


def coco_protocol(threshold: str) -> EvalProtocol:
    what = ("alpha * max(w, h) of the target instance's bounding box" if threshold == "bbox"
            else "alpha * max(W, H) of the target image")
    return EvalProtocol("COCO keypoints", (0.05, 0.1, 0.15), "lt", what,
                        "same comparison as the SPair-71k reference code: error < threshold")


@dataclass(frozen=True, eq=False)
class PairSample:
    """One scored transfer: ``src_kps`` (K, 2) in the source image, ground truth ``trg_kps``
    (K, 2) in the target image, ``norm_length`` L in target pixels (threshold = alpha * L)."""

    pair_id: str
    category: str
    src_image: ImageRef
    trg_image: ImageRef
    src_kps: np.ndarray
    trg_kps: np.ndarray
    norm_length: float
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        src = np.asarray(self.src_kps, dtype=np.float64).reshape(-1, 2)
        trg = np.asarray(self.trg_kps, dtype=np.float64).reshape(-1, 2)
        if src.shape != trg.shape:
            raise ValueError(f"pair {self.pair_id}: {len(src)} source vs {len(trg)} target points")
        if not (math.isfinite(self.norm_length) and self.norm_length > 0):
            raise ValueError(f"pair {self.pair_id}: threshold length must be > 0, "
                             f"got {self.norm_length}")
        object.__setattr__(self, "src_kps", src)
        object.__setattr__(self, "trg_kps", trg)

    @property
    def num_points(self) -> int:
        return int(self.src_kps.shape[0])


@dataclass(frozen=True)
class PairRecord:
    """A lazily loaded pair: identity and category now, keypoints on :meth:`load`."""

    pair_id: str
    category: str
    loader: Callable[[], PairSample] = field(repr=False, compare=False)

    def load(self) -> PairSample:
        return self.loader()


@dataclass(frozen=True)
class PairDataset:
    """An ordered collection of pair records plus the protocol that scores them."""

    name: str
    root: Path | None
    records: tuple[PairRecord, ...]
    protocol: EvalProtocol
    split: str = "test"

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[PairSample]:
        for record in self.records:
            yield record.load()

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(sorted({r.category for r in self.records}))

    def limited(self, limit: int | None) -> PairDataset:
        """At most ``limit`` pairs, taken round-robin over categories in file order, so a small
        limit still covers every category (deterministic; no random sampling)."""
        if limit is None or limit >= len(self.records):
            return self
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        by_cat: dict[str, list[PairRecord]] = {}
        for record in self.records:
            by_cat.setdefault(record.category, []).append(record)
        queues = [list(v) for _, v in sorted(by_cat.items())]
        picked: list[PairRecord] = []
        depth = 0
        while len(picked) < limit:
            for queue in queues:
                if depth < len(queue) and len(picked) < limit:
                    picked.append(queue[depth])
            depth += 1
        chosen = {id(r) for r in picked}
        return replace(self, records=tuple(r for r in self.records if id(r) in chosen))


# --------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> Any:
    """Strictly decoded JSON (BOM accepted; NaN, overflowing numbers, huge integers and deep
    nesting refused, as by the importers)."""
    from annotator.io.jsonio import InputFormatError, loads_strict

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetFormatError(path, "file", "not found") from None
    except OSError as exc:
        raise DatasetFormatError(path, "file", f"cannot be read ({exc})") from None
    try:
        return loads_strict(raw, str(path))
    except InputFormatError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise DatasetFormatError(path, "json", f"not valid JSON ({reason})") from None


def _field(data: Mapping[str, Any], name: str, path: Path) -> Any:
    if not isinstance(data, Mapping):
        raise DatasetFormatError(path, "json", "top level must be an object")
    if name not in data:
        raise DatasetFormatError(path, name, "missing")
    return data[name]


def _points(value: Any, path: Path, name: str) -> np.ndarray:
    """A list of [x, y] (extra columns ignored) -> (K, 2) float64."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetFormatError(path, name, "must be a list of [x, y] numbers") from None
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise DatasetFormatError(path, name, f"must be a list of [x, y] pairs, got shape "
                                             f"{arr.shape}")
    if not np.all(np.isfinite(arr[:, :2])):
        raise DatasetFormatError(path, name, "contains non-finite coordinates")
    return arr[:, :2].copy()


def _bbox_xyxy(value: Any, path: Path, name: str) -> tuple[float, float, float, float]:
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (TypeError, ValueError):
        raise DatasetFormatError(path, name, "must be [x1, y1, x2, y2]") from None
    if not (x2 > x1 and y2 > y1):
        raise DatasetFormatError(path, name, f"empty box {[x1, y1, x2, y2]}")
    return x1, y1, x2, y2


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetFormatError(path, what, "folder not found")
    return path


def load_rgb(image: ImageRef) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a path (EXIF orientation applied) or of an in-memory array."""
    if isinstance(image, np.ndarray):
        return image
    try:
        return load_image(image)
    except ImageLoadError as exc:
        raise DatasetFormatError(image, "image", str(exc)) from None


def _image_wh(path: Path) -> tuple[int, int]:
    try:
        return read_size(path)
    except ImageLoadError as exc:
        raise DatasetFormatError(path, "image", str(exc)) from None


# --------------------------------------------------------------------------- SPair-71k


def _spair_sample(path: Path, root: Path) -> PairSample:
    data = _read_json(path)
    category = str(_field(data, "category", path))
    src_name = str(_field(data, "src_imname", path))
    trg_name = str(_field(data, "trg_imname", path))
    src = _points(_field(data, "src_kps", path), path, "src_kps")
    trg = _points(_field(data, "trg_kps", path), path, "trg_kps")
    if len(src) != len(trg):
        raise DatasetFormatError(path, "trg_kps", f"{len(trg)} points but src_kps has {len(src)}")
    x1, y1, x2, y2 = _bbox_xyxy(_field(data, "trg_bndbox", path), path, "trg_bndbox")
    sx1, sy1, sx2, sy2 = _bbox_xyxy(_field(data, "src_bndbox", path), path, "src_bndbox")
    for name in ("src_imsize", "trg_imsize"):
        size = _field(data, name, path)
        if not (isinstance(size, Sequence) and len(size) >= 2
                and all(isinstance(v, (int, float)) and v > 0 for v in size[:2])):
            raise DatasetFormatError(path, name, "must be [W, H, C] with positive W and H")
    images = root / "JPEGImages" / category
    meta = {"kps_ids": data.get("kps_ids"), "src_imsize": data["src_imsize"][:2],
            "trg_imsize": data["trg_imsize"][:2], "mirror": data.get("mirror", 0),
            "viewpoint_variation": data.get("viewpoint_variation"),
            # instance boxes (x, y, w, h) for object-centric (crop) transfer
            "src_bbox": (sx1, sy1, sx2 - sx1, sy2 - sy1), "trg_bbox": (x1, y1, x2 - x1, y2 - y1)}
    return PairSample(path.stem, category, images / src_name, images / trg_name, src, trg,
                      max(x2 - x1, y2 - y1), meta)


def load_spair(root: str | os.PathLike[str], split: str = "test",
               categories: Sequence[str] | None = None) -> PairDataset:
    """SPair-71k from ``root`` (the ``SPair-71k`` folder with JPEGImages/ and PairAnnotation/).

    One record per ``PairAnnotation/<split>/*.json`` (sorted by name); the category is read
    from the file name suffix ``:<category>.json`` and checked against the JSON on load.
    """
    root = Path(root)
    if split not in SPAIR_SPLITS:
        raise ValueError(f"SPair-71k split must be one of {sorted(SPAIR_SPLITS)}, got {split!r}")
    pair_dir = _require_dir(root / "PairAnnotation" / SPAIR_SPLITS[split], "PairAnnotation")
    _require_dir(root / "JPEGImages", "JPEGImages")
    wanted = set(categories) if categories else None
    records = []
    for path in sorted(pair_dir.glob("*.json")):
        category = path.stem.rsplit(":", 1)[-1] if ":" in path.stem else None
        if category is None:  # non-standard name: read the category from the file
            category = str(_field(_read_json(path), "category", path))
        if wanted is not None and category not in wanted:
            continue

        def load(path: Path = path, category: str = category) -> PairSample:
            sample = _spair_sample(path, root)
            if sample.category != category:
                raise DatasetFormatError(path, "category", f"{sample.category!r} but the file "
                                                           f"name says {category!r}")
            return sample

        records.append(PairRecord(path.stem, category, load))
    if not records:
        raise DatasetFormatError(pair_dir, "PairAnnotation", "no pair files (*.json) found")
    log.info("SPair-71k %s: %d pairs", split, len(records))
    return PairDataset("SPair-71k", root, tuple(records), SPAIR_PROTOCOL, split)


# --------------------------------------------------------------------------- PF-Pascal


def _pf_coords(text: str, path: Path, name: str) -> np.ndarray:
    try:
        values = [float(v) for v in str(text).split(";") if v.strip()]
    except ValueError:
        raise DatasetFormatError(path, name, f"not a ';'-separated list of numbers: "
                                             f"{text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise DatasetFormatError(path, name, "contains non-finite numbers")
    return np.asarray(values, dtype=np.float64)


def _resolve_pf_image(root: Path, name: str, csv_path: Path) -> Path:
    rel = Path(name.replace("\\", "/"))
    for candidate in (root.parent / rel, root / rel, root / "JPEGImages" / rel.name):
        if candidate.is_file():
            return candidate
    raise DatasetFormatError(csv_path, "image", f"{name!r} not found under {root.parent} or "
                                                f"{root}/JPEGImages")


def _pf_sample(pair_id: str, category: str, src_path: Path, trg_path: Path, src: np.ndarray,
               trg: np.ndarray) -> PairSample:
    w, h = _image_wh(trg_path)  # threshold: the target image's longer side
    return PairSample(pair_id, category, src_path, trg_path, src, trg, float(max(w, h)))


def load_pfpascal(root: str | os.PathLike[str], split: str = "test") -> PairDataset:
    """PF-Pascal from ``root`` (the ``PF-dataset-PASCAL`` folder holding JPEGImages/ and
    ``<split>_pairs_pf_pascal.csv``: source, target, class (1-based VOC index), XA, YA, XB, YB
    with ';'-separated coordinates). Image paths in the CSV are relative to root's parent, as
    published (``PF-dataset-PASCAL/JPEGImages/...``). Coordinates are used as published."""
    root = Path(root)
    if split not in ("test", "val"):
        raise ValueError(f"PF-Pascal split must be 'test' or 'val', got {split!r}")
    csv_path = root / f"{split}_pairs_pf_pascal.csv"
    if not csv_path.is_file():
        raise DatasetFormatError(csv_path, "file", "not found")
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise DatasetFormatError(csv_path, "header", "empty file")
    header, body = rows[0], rows[1:]
    if len(header) < 7:
        raise DatasetFormatError(csv_path, "header", "expected 7 columns: source_image, "
                                                     f"target_image, class, XA, YA, XB, YB; got "
                                                     f"{header}")
    records = []
    for line, row in enumerate(body, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"line {line}"
        if len(row) < 7:
            raise DatasetFormatError(csv_path, where, f"expected 7 columns, got {len(row)}")
        try:
            cls = int(float(row[2]))
        except ValueError:
            raise DatasetFormatError(csv_path, f"{where} class", f"not an integer: "
                                                                 f"{row[2]!r}") from None
        if not 1 <= cls <= len(PF_PASCAL_CLASSES):
            raise DatasetFormatError(csv_path, f"{where} class", f"{cls} is not in 1..20")
        xa, ya, xb, yb = (_pf_coords(row[i], csv_path, f"{where} {header[i]}")
                          for i in range(3, 7))
        if not (len(xa) == len(ya) == len(xb) == len(yb)) or len(xa) == 0:
            raise DatasetFormatError(csv_path, f"{where} XA/YA/XB/YB", "coordinate lists must "
                                     f"be non-empty and of equal length, got {len(xa)}, "
                                     f"{len(ya)}, {len(xb)}, {len(yb)}")
        src_path = _resolve_pf_image(root, row[0].strip(), csv_path)
        trg_path = _resolve_pf_image(root, row[1].strip(), csv_path)
        category = PF_PASCAL_CLASSES[cls - 1]
        pair_id = f"{line - 1:04d}-{src_path.stem}-{trg_path.stem}"

        load = partial(_pf_sample, pair_id, category, src_path, trg_path,
                       np.stack([xa, ya], 1), np.stack([xb, yb], 1))
        records.append(PairRecord(pair_id, category, load))
    if not records:
        raise DatasetFormatError(csv_path, "rows", "no pairs")
    log.info("PF-Pascal %s: %d pairs", split, len(records))
    return PairDataset("PF-Pascal", root, tuple(records), PFPASCAL_PROTOCOL, split)


# --------------------------------------------------------------------------- TSS / .flo


def read_flo(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a Middlebury ``.flo`` file: float32 magic 202021.25, int32 width, int32 height, then
    H * W * 2 float32 (u, v) row-major, little-endian. Returns (H, W, 2) float32."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetFormatError(path, "file", "not found") from None
    if len(raw) < 12:
        raise DatasetFormatError(path, "header", f"file has {len(raw)} bytes, need at least 12")
    magic = np.frombuffer(raw, "<f4", 1, 0)[0]
    if magic != np.float32(FLO_MAGIC):
        raise DatasetFormatError(path, "magic", f"{magic!r} is not {FLO_MAGIC} (not a .flo file)")
    w, h = (int(v) for v in np.frombuffer(raw, "<i4", 2, 4))
    if w <= 0 or h <= 0 or w * h > 100_000_000:
        raise DatasetFormatError(path, "size", f"implausible width x height {w} x {h}")
    need = 12 + 8 * w * h
    if len(raw) != need:
        raise DatasetFormatError(path, "data", f"{len(raw)} bytes, expected {need} for "
                                               f"{w} x {h}")
    return np.frombuffer(raw, "<f4", 2 * w * h, 12).reshape(h, w, 2).astype(np.float32)


def write_flo(path: str | os.PathLike[str], flow: np.ndarray) -> None:
    """Write (H, W, 2) flow as a Middlebury ``.flo`` file."""
    flow = np.asarray(flow, dtype="<f4")
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must have shape (H, W, 2), got {flow.shape}")
    h, w = flow.shape[:2]
    with open(path, "wb") as fh:
        fh.write(np.asarray([FLO_MAGIC], "<f4").tobytes())
        fh.write(np.asarray([w, h], "<i4").tobytes())
        fh.write(flow.tobytes())


def _read_mask(path: Path) -> np.ndarray:
    gray = load_rgb(path)[..., 0] if path.is_file() else None
    if gray is None:
        raise DatasetFormatError(path, "mask", "not found")
    return gray > 127


def _tss_class(subset: str, folder: str) -> str:
    if "Car" in subset:
        return "car"
    name = folder.split("_")[0].lower()
    return _TSS_CLASS_ALIASES.get(name, name)


def _tss_sample(folder: Path, subset: str, n: int, stride: int) -> PairSample:
    """Direction ``n``: flow{n}.flo lives on image{n}'s grid and points into image{3-n}:
    p_other = q + flow(q) for every foreground pixel q of mask{n}."""
    other = 3 - n
    ref_path, other_path = folder / f"image{n}.png", folder / f"image{other}.png"
    flo_path, mask_path = folder / f"flow{n}.flo", folder / f"mask{n}.png"
    flow = read_flo(flo_path)
    mask = _read_mask(mask_path)
    if mask.shape != flow.shape[:2]:
        raise DatasetFormatError(mask_path, "size", f"mask is {mask.shape[1]} x {mask.shape[0]} "
                                 f"but {flo_path.name} is {flow.shape[1]} x {flow.shape[0]}")
    ref_w, ref_h = _image_wh(ref_path)
    if (ref_h, ref_w) != flow.shape[:2]:
        raise DatasetFormatError(flo_path, "size", f"flow is {flow.shape[1]} x {flow.shape[0]} "
                                 f"but {ref_path.name} is {ref_w} x {ref_h}")
    ow, oh = _image_wh(other_path)
    valid = mask & np.all(np.abs(flow) < FLO_UNKNOWN, axis=2) & np.all(np.isfinite(flow), axis=2)
    if stride > 1:
        grid = np.zeros_like(valid)
        grid[::stride, ::stride] = True
        valid &= grid
    ys, xs = np.nonzero(valid)
    q = np.stack([xs, ys], 1).astype(np.float64)
    p = q + flow[ys, xs].astype(np.float64)
    return PairSample(f"{subset}/{folder.name}/{n}to{other}", subset, ref_path, other_path, q, p,
                      float(max(ow, oh)), {"object": _tss_class(subset, folder.name),
                                           "direction": f"image{n}->image{other}"})


def load_tss(root: str | os.PathLike[str], subsets: Sequence[str] = TSS_SUBSETS,
             stride: int = 1) -> PairDataset:
    """TSS (``TSS_CVPR2016``): ``root/<subset>/<pair>/{image1,image2}.png, flow{1,2}.flo,
    mask{1,2}.png`` for subsets FG3DCar, JODS, PASCAL. Both directions of every pair are
    records; the category is the subset (the published TSS tables are per subset). ``root`` may
    also be one subset folder. ``stride`` > 1 keeps foreground pixels on a stride grid only."""
    root = Path(root)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    _require_dir(root, "root")
    if root.name in TSS_SUBSETS:
        found = [(root.name, root)]
    else:
        found = [(s, root / s) for s in subsets if (root / s).is_dir()]
    if not found:
        raise DatasetFormatError(root, "subsets", f"none of {list(subsets)} found")
    records = []
    for subset, subset_dir in found:
        for folder in sorted(p for p in subset_dir.iterdir() if p.is_dir()):
            for n in (2, 1):  # same order as the reference code
                for name in (f"image{n}.png", f"image{3 - n}.png", f"flow{n}.flo",
                             f"mask{n}.png"):
                    if not (folder / name).is_file():
                        raise DatasetFormatError(folder / name, "file", "not found")

                def load(folder: Path = folder, subset: str = subset, n: int = n) -> PairSample:
                    return _tss_sample(folder, subset, n, stride)

                records.append(PairRecord(f"{subset}/{folder.name}/{n}to{3 - n}", subset, load))
    if not records:
        raise DatasetFormatError(root, "pairs", "no pair folders found")
    log.info("TSS: %d directed pairs", len(records))
    return PairDataset("TSS", root, tuple(records), TSS_PROTOCOL, "test")


# --------------------------------------------------------------------------- COCO keypoints


def _coco_kps(ann: Mapping[str, Any], k: int, path: Path) -> np.ndarray:
    where = f"annotations[id={ann.get('id')}].keypoints"
    values = ann.get("keypoints")
    if not isinstance(values, list) or len(values) != 3 * k:
        n = len(values) if isinstance(values, list) else type(values).__name__
        raise DatasetFormatError(path, where, f"must be a list of 3 x {k} numbers, got {n}")
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(k, 3)
    except (TypeError, ValueError):
        raise DatasetFormatError(path, where, "contains non-numbers") from None
    if not np.all(np.isfinite(arr)):
        raise DatasetFormatError(path, where, "contains non-finite numbers")
    return arr


def _coco_box(box: Any) -> tuple[float, float, float, float] | None:
    """(x, y, w, h) of a valid COCO bbox with w, h > 0, else None."""
    if not (isinstance(box, list) and len(box) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
        return None
    x, y, w, h = (float(v) for v in box)
    return (x, y, w, h) if w > 0 and h > 0 else None


def load_coco_pairs(annotations: str | os.PathLike[str],
                    image_root: str | os.PathLike[str] | None = None, *,
                    threshold: Literal["bbox", "image"] = "bbox",
                    categories: Sequence[str] | None = None) -> PairDataset:
    """Every ordered pair of distinct instances of one category in a COCO keypoint file.

    Only keypoints labelled (v > 0) in both instances are scored; pairs without a common
    labelled keypoint are skipped. ``image_root`` defaults to the annotation file's folder.
    Threshold length: max(w, h) of the target ``bbox`` ("bbox") or of the target image.
    """
    path = Path(annotations)
    root = Path(image_root) if image_root is not None else path.parent
    if threshold not in ("bbox", "image"):
        raise ValueError(f"threshold must be 'bbox' or 'image', got {threshold!r}")
    data = _read_json(path)
    images, anns, cats = (_field(data, k, path) for k in ("images", "annotations", "categories"))
    if not all(isinstance(v, list) for v in (images, anns, cats)):
        raise DatasetFormatError(path, "json", "images, annotations and categories must be lists")
    cat_info: dict[Any, tuple[str, int]] = {}
    for i, cat in enumerate(cats):
        names = cat.get("keypoints") if isinstance(cat, Mapping) else None
        if not isinstance(names, list) or not names or "id" not in cat:
            raise DatasetFormatError(path, f"categories[{i}]", "needs an id and a non-empty "
                                                              "keypoints list")
        cat_info[cat["id"]] = (str(cat.get("name", cat["id"])), len(names))
    image_info: dict[Any, Mapping[str, Any]] = {}
    for i, img in enumerate(images):
        if not isinstance(img, Mapping) or "id" not in img or "file_name" not in img:
            raise DatasetFormatError(path, f"images[{i}]", "needs id and file_name")
        image_info[img["id"]] = img
    wanted = set(categories) if categories else None
    by_cat: dict[str, list[tuple[Mapping[str, Any], np.ndarray]]] = {}
    for ann in anns:
        if not isinstance(ann, Mapping):
            raise DatasetFormatError(path, "annotations", "entries must be objects")
        if ann.get("iscrowd", 0):
            continue
        cid, iid = ann.get("category_id"), ann.get("image_id")
        if cid not in cat_info:
            raise DatasetFormatError(path, f"annotations[id={ann.get('id')}].category_id",
                                     f"unknown category {cid!r}")
        if iid not in image_info:
            raise DatasetFormatError(path, f"annotations[id={ann.get('id')}].image_id",
                                     f"unknown image {iid!r}")
        name, k = cat_info[cid]
        if wanted is not None and name not in wanted:
            continue
        kps = _coco_kps(ann, k, path)
        if not np.any(kps[:, 2] > 0):
            continue
        if threshold == "bbox":
            box = ann.get("bbox")
            ok = isinstance(box, list) and len(box) == 4
            if not ok or not all(isinstance(v, (int, float)) for v in box) or max(box[2:]) <= 0:
                raise DatasetFormatError(path, f"annotations[id={ann.get('id')}].bbox",
                                         f"must be [x, y, w, h] with w or h > 0, got {box!r}")
        by_cat.setdefault(name, []).append((ann, kps))

    def image_path(iid: Any) -> Path:
        from annotator.io.images import resolve_image_path

        try:
            return resolve_image_path(root, str(image_info[iid]["file_name"]))
        except ValueError as exc:
            raise DatasetFormatError(path, f"images[id={iid}].file_name", str(exc)) from None

    records = []
    for name in sorted(by_cat):
        for (a, ka), (b, kb) in permutations(by_cat[name], 2):
            common = (ka[:, 2] > 0) & (kb[:, 2] > 0)
            if not common.any():
                continue
            pair_id = f"{name}/{a.get('id')}->{b.get('id')}"

            def load(a: Mapping[str, Any] = a, b: Mapping[str, Any] = b, ka: np.ndarray = ka,
                     kb: np.ndarray = kb, common: np.ndarray = common, name: str = name,
                     pair_id: str = pair_id) -> PairSample:
                trg_path = image_path(b["image_id"])
                if threshold == "bbox":
                    length = float(max(b["bbox"][2], b["bbox"][3]))
                else:
                    info = image_info[b["image_id"]]
                    if info.get("width") and info.get("height"):
                        length = float(max(info["width"], info["height"]))
                    else:
                        length = float(max(_image_wh(trg_path)))
                meta: dict[str, Any] = {"keypoint_index": np.nonzero(common)[0].tolist()}
                boxes = (_coco_box(a.get("bbox")), _coco_box(b.get("bbox")))
                if boxes[0] is not None and boxes[1] is not None:  # for crop transfer
                    meta["src_bbox"], meta["trg_bbox"] = boxes
                return PairSample(pair_id, name, image_path(a["image_id"]), trg_path,
                                  ka[common, :2], kb[common, :2], length, meta)

            records.append(PairRecord(pair_id, name, load))
    if not records:
        raise DatasetFormatError(path, "annotations", "no pair of instances of one category "
                                                      "shares a labelled keypoint")
    log.info("COCO %s: %d ordered pairs", path.name, len(records))
    return PairDataset(f"COCO ({path.name})", root, tuple(records), coco_protocol(threshold),
                       "all")
