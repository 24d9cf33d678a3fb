"""Ultralytics YOLO pose datasets, written and read by hand.

sleap-io (0.9) writes YOLO pose with every occluded point as 0, an identity ``flip_idx``,
padded boxes and renamed re-encoded images, and reads 1 and 2 alike; so this module writes
the train-ready layout itself::

    OUT/data.yaml                    kpt_shape [K, 3], flip_idx, names, kpt_names, skeleton
    OUT/images/train/<image path>    copies of the project's images (same relative paths)
    OUT/labels/train/<image stem>.txt  one line per instance:
        class cx cy w h  x1 y1 v1 ... xK yK vK   (normalised to [0, 1], 6 decimals)

and ``images/val`` / ``labels/val`` when a validation share is asked for. Visibility is
COCO's 0/1/2; a missing point is ``0 0 0``. The box is the instance's own box or else the
labelled keypoints' bounds, cut to the image. ``train``/``val`` are written as
``./images/train`` so that readers which derive the label folder by replacing
``/images`` (sleap-io) find it too; Ultralytics resolves both forms against ``path``.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from annotator.domain.annotation import ImageAnnotation, Instance, Keypoint, Visibility
from annotator.domain.project import Project
from annotator.domain.schema import KeypointSchema, SchemaError, infer_flip_pairs
from annotator.io.formats._common import (
    DEFAULT_EXPORT,
    MAX_LISTED,
    MAX_NAME,
    ExportOptions,
    ExportReport,
    FormatError,
    Frame,
    ProgressFn,
    clip_box,
    copy_image,
    dataset_file,
    export_frames,
    imported_status,
    instance_box,
    is_inside,
    load_yaml,
    project_from_frames,
    read_dataset_text,
    require_yaml,
    staged_folder,
    write_phase,
)
from annotator.io.freeing import take_apart
from annotator.io.images import IMAGE_EXTENSIONS, ImageLoadError, read_size
from annotator.io.jsonio import check_coordinate

log = logging.getLogger(__name__)

DECIMALS = 6
MARKER = "# YOLO pose dataset written by keypoint-annotator"


def flip_idx(schema: KeypointSchema) -> list[int]:
    """Ultralytics ``flip_idx``: for each keypoint, the index of its left/right partner."""
    return list(schema.flip_permutation())


def _split_of(path: str, val_fraction: float) -> str:
    if val_fraction <= 0:
        return "train"
    return "val" if zlib.crc32(path.encode()) % 10_000 < val_fraction * 10_000 else "train"


def _fmt(value: float) -> str:
    return f"{value:.{DECIMALS}f}"


def _label_line(inst: Instance, width: int, height: int) -> tuple[str, int]:
    """One label line and the number of keypoints clipped into the image."""
    x, y, w, h = clip_box(instance_box(inst, width, height), width, height)
    parts = ["0", _fmt((x + w / 2) / width), _fmt((y + h / 2) / height),
             _fmt(w / width), _fmt(h / height)]
    clipped = 0
    for kp in inst.keypoints:
        if not kp.labelled:
            parts += ["0", "0", "0"]
            continue
        nx, ny = kp.x / width, kp.y / height
        if not (0.0 <= nx <= 1.0 and 0.0 <= ny <= 1.0):
            clipped += 1
            nx, ny = min(max(nx, 0.0), 1.0), min(max(ny, 0.0), 1.0)
        parts += [_fmt(nx), _fmt(ny), str(int(kp.v))]
    return " ".join(parts), clipped


def data_yaml(schema: KeypointSchema, splits: Sequence[str], root: Path) -> dict[str, Any]:
    """The dataset description. ``path`` is the absolute dataset folder: Ultralytics resolves
    a relative one against its own datasets folder or the working directory, not the
    YAML's folder (this module's reader prefers the YAML's folder, so a moved dataset still
    reads)."""
    doc: dict[str, Any] = {
        "path": str(root.resolve()),
        "train": "./images/train",
        "val": "./images/val" if "val" in splits else "./images/train",
        "kpt_shape": [len(schema), 3],
        "flip_idx": flip_idx(schema),
        "names": {0: schema.name},
        "kpt_names": {0: list(schema.keypoints)},
        "node_names": list(schema.keypoints),  # sleap-io's key for the keypoint names
        "skeleton": [[a, b] for a, b in schema.skeleton],  # 0-based, informative
    }
    return doc


def write_yolo_pose(
    project: Project, out: str | Path, options: ExportOptions = DEFAULT_EXPORT,
    progress: ProgressFn | None = None,
) -> ExportReport:
    """Write ``project`` as a train-ready Ultralytics pose dataset in folder ``out``
    (``progress``: see :data:`~annotator.io.formats._common.ProgressFn`)."""
    yaml = require_yaml()
    out = Path(out)
    frames = export_frames(project, options, progress)
    written = write_phase(progress, project, len(frames))
    n_frames = len(frames)
    by_split: dict[str, list[Frame]] = {}
    try:
        for frame in frames:
            by_split.setdefault(_split_of(frame.path, options.val_fraction), []).append(frame)
        if options.val_fraction > 0 and "val" not in by_split \
                and len(by_split.get("train", [])) > 1:
            by_split["val"] = [by_split["train"].pop()]  # a tiny project still gets a val image
        instances = clipped = images_done = 0
        with staged_folder(out, "YOLO dataset") as stage:
            for split, split_frames in by_split.items():
                seen: dict[Path, str] = {}
                for frame in split_frames:
                    label = stage / "labels" / split / Path(frame.path).with_suffix(".txt")
                    if label in seen:
                        raise FormatError(
                            f"images {seen[label]!r} and {frame.path!r} would share a label file "
                            f"({Path(frame.path).with_suffix('.txt')}); rename one of them"
                        )
                    seen[label] = frame.path
                    written(images_done)  # may raise: a cancel removes the staged folder
                    images_done += 1
                    copy_image(frame.source, stage / "images" / split / frame.path)
                    lines = []
                    for inst in frame.instances:
                        line, n = _label_line(inst, frame.width, frame.height)
                        lines.append(line)
                        clipped += n
                    label.parent.mkdir(parents=True, exist_ok=True)
                    label.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
                    instances += len(lines)
                take_apart(seen)
            text = yaml.safe_dump(data_yaml(project.schema, sorted(by_split), out), sort_keys=False,
                                  allow_unicode=True, default_flow_style=None)
            (stage / "data.yaml").write_text(f"{MARKER}\n{text}", encoding="utf-8")
            written(len(frames))
    finally:  # not in one free at the return (see annotator.io.freeing)
        take_apart(by_split, frames)
    notes = []
    if clipped:
        notes.append(f"{clipped} keypoint(s) outside their image moved onto its border")
    return ExportReport(out, n_frames, instances, tuple(notes))


# ==================================================================== import
def _find_yaml(path: Path) -> Path:
    if path.is_dir():
        path = path / "data.yaml"
    if not path.is_file():
        raise FormatError(f"{path}: YOLO dataset description (data.yaml) not found")
    return path


def _schema(doc: dict, source: str) -> KeypointSchema:
    shape = doc.get("kpt_shape")
    if (
        not isinstance(shape, list) or len(shape) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
        or shape[0] < 1 or shape[1] not in (2, 3)
    ):
        raise FormatError(f"{source}: kpt_shape {shape!r} is not [K, 2] or [K, 3]; "
                          "is this a pose dataset?")
    k = shape[0]
    names_raw = doc.get("names")
    if isinstance(names_raw, dict) and names_raw:
        category = str(names_raw[min(names_raw)])
    elif isinstance(names_raw, list) and names_raw:
        category = str(names_raw[0])
    else:
        category = "object"
    kpt_names = doc.get("kpt_names")
    if isinstance(kpt_names, dict) and kpt_names:
        kpt_names = kpt_names[min(kpt_names)]
    if kpt_names is None:
        kpt_names = doc.get("node_names")
    if kpt_names is None:
        kpt_names = [f"kp{i}" for i in range(k)]
    if not isinstance(kpt_names, list) or len(kpt_names) != k:
        raise FormatError(f"{source}: {len(kpt_names)} keypoint names for kpt_shape K = {k}")
    names = [str(n) for n in kpt_names]
    flips = doc.get("flip_idx")
    if flips is None:
        pairs = infer_flip_pairs(names)
    else:
        if (not isinstance(flips, list) or len(flips) != k
                or not all(isinstance(f, int) and 0 <= f < k for f in flips)
                or any(flips[f] != i for i, f in enumerate(flips))):
            raise FormatError(f"{source}: flip_idx {flips!r} is not a pairing of 0..{k - 1}")
        pairs = tuple((i, f) for i, f in enumerate(flips) if i < f)
    edges = []
    for e in doc.get("skeleton") or []:
        if not (isinstance(e, list) and len(e) == 2 and all(isinstance(v, int) for v in e)):
            raise FormatError(f"{source}: skeleton edge {e!r} is not a pair of indices")
        edges.append((e[0], e[1]))
    try:
        return KeypointSchema(category, tuple(names), tuple(edges), pairs)
    except SchemaError as exc:
        raise FormatError(f"{source}: {exc}") from None


def _walk_images(folder: Path, source: str) -> list[Path]:
    """Image files below ``folder``; links to folders are not followed and at most
    :data:`MAX_LISTED` entries are walked (a crafted ``train: /`` must not walk the disk)."""
    found = []
    walked = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        walked += len(dirnames) + len(filenames)
        if walked > MAX_LISTED:
            raise FormatError(f"{source}: split folder {folder} holds more than "
                              f"{MAX_LISTED:,} entries; not listed")
        found += [Path(dirpath, n) for n in filenames
                  if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def _split_images(root: Path, entry: Any, source: str) -> list[Path]:
    """The images a split entry lists, as paths under ``root`` (not yet checked for links
    that leave it)."""
    entries = entry if isinstance(entry, list) else [entry]
    out: list[Path] = []
    for e in entries:
        if not isinstance(e, str) or "\x00" in e or len(e) > MAX_NAME:
            raise FormatError(f"{source}: split entry {str(e)[:80]!r} is not a path")
        candidates = [Path(os.path.normpath(root / e))]
        if e.startswith("../"):  # Roboflow's data.yaml, resolved as Ultralytics does
            candidates.append(Path(os.path.normpath(root / e[3:])))
        inside = [c for c in candidates if is_inside(c, root)]
        if not inside:
            raise FormatError(f"{source}: split {e!r} is outside the dataset folder {root}; "
                              "not read (pass --images FOLDER to read a dataset elsewhere)")
        p = next((c for c in inside if os.path.lexists(c)), inside[0])
        if not is_inside(Path(os.path.realpath(p)), root):
            raise FormatError(f"{source}: split {e!r} links outside the dataset folder {root}; "
                              "not read")
        if p.is_dir():
            out += _walk_images(p, source)
        elif p.is_file() and p.suffix == ".txt":
            for line in read_dataset_text(p, root, "image list").splitlines():
                if line.strip():
                    out.append(Path(os.path.normpath(p.parent / line.strip())))
        else:
            raise FormatError(f"{source}: split folder {p} does not exist")
    return out


def label_path_of(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    raise FormatError(f"{image}: not inside an 'images' folder, so it has no label file")


def _parse_labels(
    label: Path, text: str, k: int, ndim: int, width: int, height: int
) -> list[tuple[Instance, tuple[float, float, float, float]]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        where = f"{label}, line {n}"
        if len(parts) != 5 + k * ndim:
            raise FormatError(f"{where}: {len(parts)} values, expected 5 + {k} x {ndim} = "
                              f"{5 + k * ndim} (class, box, keypoints)")
        try:
            values = [float(p) for p in parts[1:]]
        except ValueError as exc:
            raise FormatError(f"{where}: {exc}") from None
        if not all(math.isfinite(v) for v in values):
            raise FormatError(f"{where}: a value is not finite")
        cx, cy, bw, bh = values[:4]
        kps = []
        for j in range(k):
            nx, ny = values[4 + j * ndim], values[5 + j * ndim]
            v = values[6 + j * ndim] if ndim == 3 else (0.0 if nx == ny == 0 else 2.0)
            if v not in (0.0, 1.0, 2.0):
                raise FormatError(f"{where}, keypoint {j}: visibility {v} is not 0, 1 or 2")
            if v:
                x = check_coordinate(nx * width, f"{where}, keypoint {j} x", FormatError)
                y = check_coordinate(ny * height, f"{where}, keypoint {j} y", FormatError)
                kps.append(Keypoint(x, y, Visibility(int(v))))
            else:
                kps.append(Keypoint())
        box = ((cx - bw / 2) * width, (cy - bh / 2) * height, bw * width, bh * height)
        for value in box:
            check_coordinate(value, f"{where}, box", FormatError)
        out.append((Instance(tuple(kps)), box))
    return out


def _with_box(inst: Instance, box: tuple[float, float, float, float], width: int,
              height: int) -> Instance:
    """Keep the box unless it is the one an export derives from the keypoints."""
    if box[2] <= 0 or box[3] <= 0:
        return inst
    if inst.num_labelled:
        derived = clip_box(instance_box(inst, width, height), width, height)
        tol = 2 * 10 ** -DECIMALS * max(width, height)
        if all(abs(a - b) <= tol for a, b in zip(box, derived)):
            return inst
    return Instance(inst.keypoints, box)


def read_yolo_pose(path: str | Path, image_root: str | Path | None = None) -> Project:
    """A project from an Ultralytics pose dataset (``data.yaml`` or its folder). Every split
    listed (train, val, test) is read; the image root is the dataset folder (the YAML's
    folder, or ``image_root``), and nothing outside it is read."""
    require_yaml()
    yml = _find_yaml(Path(path))
    source = str(yml)
    text = read_dataset_text(yml, yml.parent, "dataset description")
    doc = load_yaml(text, str(source))
    if not isinstance(doc, dict):
        raise FormatError(f"{source}: not a YOLO dataset description")
    schema = _schema(doc, source)
    k, ndim = doc["kpt_shape"]
    root = Path(os.path.realpath(image_root if image_root is not None else yml.parent))
    given = doc.get("path")
    train = doc.get("train")
    if (image_root is None and isinstance(given, str) and Path(given).is_absolute()
            and isinstance(train, str) and not os.path.lexists(
                os.path.normpath(root / train))):
        raise FormatError(f"{source}: its splits are not next to it but under path: {given!r}, "
                          f"outside the dataset folder {root}; pass --images {given} to read "
                          "them there")
    images: dict[Path, None] = {}  # ordered, without the repeats of val = train
    for split in ("train", "val", "test"):
        if doc.get(split):
            images.update(dict.fromkeys(_split_images(root, doc[split], source)))
    if not images:
        raise FormatError(f"{source}: no images in its train/val/test splits")
    frames = []
    for image in images:
        if not is_inside(image, root) or not is_inside(Path(os.path.realpath(image)), root):
            raise FormatError(f"{source}: image {image} is outside the dataset folder {root}; "
                              "not read")
        rel = image.relative_to(root).as_posix()
        label = label_path_of(image)
        if not os.path.lexists(label):
            frames.append((rel, None, None, ImageAnnotation()))
            continue
        text = read_dataset_text(label, root, "label file")
        try:
            width, height = read_size(dataset_file(image, root, "image"))
        except (ImageLoadError, ValueError) as exc:
            raise FormatError(f"{label}: its image cannot be read for its size ({exc})") from None
        insts = tuple(_with_box(inst, box, width, height)
                      for inst, box in _parse_labels(label, text, k, ndim, width, height))
        frames.append((rel, width, height, ImageAnnotation(insts, imported_status(insts))))
    return project_from_frames(root, schema, frames, source)
