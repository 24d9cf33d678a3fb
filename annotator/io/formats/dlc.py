"""DeepLabCut projects (labelled-frames layout), written and read by hand.

sleap-io (0.9) writes DLC CSV with invented image names (``img0000.png``) and no
``config.yaml``, and reads only frames whose image files it finds, renumbered per folder;
so this module writes and reads the layout itself::

    OUT/config.yaml                                  bodyparts, skeleton, individuals
    OUT/labeled-data/<folder>/<image name>           copies of the project's images
    OUT/labeled-data/<folder>/CollectedData_<scorer>.csv

``<folder>`` is the image's folder in the project (``/`` written as ``__``; ``images`` for
top-level images). The CSV has DLC's header rows (scorer, [individuals,] bodyparts, coords)
and a three-column row index (``labeled-data``, folder, file name). Projects with more
than one instance on some image are written as multi-animal (individuals ``animal1`` ...).
DLC has no visibility flag: a point has coordinates or is empty. Occluded points are
written with their coordinates (``drop_occluded`` leaves them empty instead) and every
point read back is visible (v = 2). DLC's ``.h5`` copy of the CSV is not written (it needs
PyTables); ``deeplabcut.convertcsv2h5(config)`` makes it. Boxes are not kept.
"""

from __future__ import annotations

import csv
import datetime
import io
import logging
import math
from pathlib import Path
from typing import Any

from annotator.domain.annotation import ImageAnnotation, Instance, Keypoint, Origin, Visibility
from annotator.domain.project import Project
from annotator.domain.schema import KeypointSchema, SchemaError, infer_flip_pairs
from annotator.io.formats._common import (
    DEFAULT_EXPORT,
    ExportOptions,
    ExportReport,
    FormatError,
    Frame,
    copy_image,
    export_frames,
    imported_status,
    project_from_frames,
    require_yaml,
    staged_folder,
)

log = logging.getLogger(__name__)

SCORER = "annotator"
DECIMALS = 3


def _folder_of(path: str) -> str:
    parent = Path(path).parent.as_posix()
    return "images" if parent in ("", ".") else parent.replace("/", "__")


def _config(schema: KeypointSchema, out: Path, individuals: list[str],
            folders: dict[str, Frame]) -> dict[str, Any]:
    names = list(schema.keypoints)
    multi = bool(individuals)
    doc: dict[str, Any] = {
        "Task": schema.name,
        "scorer": SCORER,
        "date": datetime.date.today().strftime("%b%d"),
        "multianimalproject": multi,
        "identity": False if multi else None,
        "project_path": str(out.resolve()),
        "engine": "pytorch",
        # DLC finds labeled-data/<name> through the video names; the videos need not exist
        "video_sets": {
            str(out.resolve() / "videos" / f"{name}.mp4"): {
                "crop": f"0, {f.width}, 0, {f.height}"
            }
            for name, f in folders.items()
        },
        "bodyparts": "MULTI!" if multi else names,
        "start": 0, "stop": 1, "numframes2pick": 20,
        "skeleton": [[names[a], names[b]] for a, b in schema.skeleton],
        "skeleton_color": "black",
        "pcutoff": 0.6, "dotsize": 12, "alphavalue": 0.7, "colormap": "rainbow",
        "TrainingFraction": [0.95], "iteration": 0,
        "default_net_type": "resnet_50", "default_augmenter": "default",
        "snapshotindex": -1, "batch_size": 8,
        "cropping": False, "x1": 0, "x2": 640, "y1": 277, "y2": 624,
        "corner2move2": [50, 50], "move2corner": True,
    }
    if multi:
        doc["individuals"] = individuals
        doc["uniquebodyparts"] = []
        doc["multianimalbodyparts"] = names
    return doc


def _value(kp: Keypoint, drop_occluded: bool) -> tuple[str, str]:
    if not kp.labelled or (drop_occluded and kp.v == Visibility.OCCLUDED):
        return "", ""
    return f"{kp.x:.{DECIMALS}f}", f"{kp.y:.{DECIMALS}f}"


def write_dlc(
    project: Project, out: str | Path, options: ExportOptions = DEFAULT_EXPORT
) -> ExportReport:
    """Write ``project`` as a DeepLabCut project folder ``out`` (labelled frames)."""
    yaml = require_yaml()
    out = Path(out)
    frames = export_frames(project, options)
    schema = project.schema
    most = max((len(f.instances) for f in frames), default=0)
    individuals = [f"animal{i + 1}" for i in range(most)] if most > 1 else []
    n_slots = max(most, 1)
    groups: dict[str, list[Frame]] = {}
    for frame in frames:
        groups.setdefault(_folder_of(frame.path), []).append(frame)
    occluded = dropped = 0
    with staged_folder(out, "DeepLabCut project") as stage:
        for folder, group in groups.items():
            names_seen: set[str] = set()
            header: list[list[str]] = [["scorer", "", ""]]
            if individuals:
                header.append(["individuals", "", ""])
            header += [["bodyparts", "", ""], ["coords", "", ""]]
            for slot in range(n_slots):
                for name in schema.keypoints:
                    for coord in ("x", "y"):
                        header[0].append(SCORER)
                        if individuals:
                            header[1].append(individuals[slot])
                        header[-2].append(name)
                        header[-1].append(coord)
            rows = []
            for frame in group:
                file_name = Path(frame.path).name
                if file_name in names_seen:  # cannot happen: one folder, unique names
                    raise FormatError(f"image {frame.path!r} is listed twice")
                names_seen.add(file_name)
                copy_image(frame.source, stage / "labeled-data" / folder / file_name)
                row = ["labeled-data", folder, file_name]
                for slot in range(n_slots):
                    inst = frame.instances[slot] if slot < len(frame.instances) else None
                    for j in range(len(schema)):
                        kp = inst.keypoints[j] if inst is not None else Keypoint()
                        if kp.v == Visibility.OCCLUDED:
                            occluded += 1
                            dropped += options.drop_occluded
                        row += _value(kp, options.drop_occluded)
                rows.append(row)
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(header + rows)
            target = stage / "labeled-data" / folder / f"CollectedData_{SCORER}.csv"
            target.write_text(buf.getvalue(), encoding="utf-8")
        first = {name: group[0] for name, group in groups.items()}
        text = yaml.safe_dump(_config(schema, out, individuals, first), sort_keys=False,
                              allow_unicode=True, default_flow_style=None)
        (stage / "config.yaml").write_text(text, encoding="utf-8")
    notes = []
    if occluded and not options.drop_occluded:
        notes.append(f"{occluded} occluded keypoint(s) written as labelled (DLC has no "
                     "occluded flag)")
    if dropped:
        notes.append(f"{dropped} occluded keypoint(s) left out (DLC has no occluded flag)")
    n_inst = sum(len(f.instances) for f in frames)
    return ExportReport(out, len(frames), n_inst, tuple(notes))


# ==================================================================== import
def _read_config(path: Path) -> dict[str, Any]:
    yaml = require_yaml()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FormatError(f"{path}: not readable YAML ({exc})") from None
    if not isinstance(doc, dict) or "bodyparts" not in doc:
        raise FormatError(f"{path}: not a DeepLabCut config.yaml (no bodyparts)")
    return doc


def _parse_csv(path: Path) -> tuple[list[str], list[tuple[str, list[list[Keypoint]]]]]:
    """Body part names and, per image, its individuals' keypoints (in header order)."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FormatError(f"{path}: cannot be read as CSV ({exc})") from None
    if len(rows) < 3 or not rows[0] or rows[0][0] != "scorer":
        raise FormatError(f"{path}: not a DeepLabCut CSV (its first row must start 'scorer')")
    multi = rows[1][:1] == ["individuals"]
    n_header = 4 if multi else 3
    if len(rows) < n_header or rows[n_header - 2][:1] != ["bodyparts"] or \
            rows[n_header - 1][:1] != ["coords"]:
        raise FormatError(f"{path}: header rows must be scorer, [individuals,] bodyparts, "
                          "coords")
    coords = rows[n_header - 1]
    n_index = next((j for j, c in enumerate(coords) if j and c in ("x", "y", "likelihood")),
                   None)
    if n_index is None:
        raise FormatError(f"{path}: the coords row names no x/y columns")
    columns = []
    for j in range(n_index, len(coords)):
        ind = rows[1][j] if multi else ""
        columns.append((ind, rows[n_header - 2][j], coords[j]))
    bodyparts: list[str] = []
    individuals: list[str] = []
    for ind, bp, coord in columns:
        if coord not in ("x", "y", "likelihood"):
            raise FormatError(f"{path}: unknown coordinate {coord!r} in the coords row")
        if ind == "single":  # maDLC unique body parts: not part of the individuals' schema
            continue
        if bp not in bodyparts:
            bodyparts.append(bp)
        if ind not in individuals:
            individuals.append(ind)
    if any(ind == "single" for ind, _, _ in columns):
        log.warning("%s: unique body parts ('single') are not imported", path)
    images = []
    for n, row in enumerate(rows[n_header:], n_header + 1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != n_index + len(columns):
            raise FormatError(f"{path}, line {n}: {len(row)} cells, expected "
                              f"{n_index + len(columns)}")
        image = "/".join(c for c in row[:n_index] if c).replace("\\", "/")
        values: dict[tuple[str, str, str], float] = {}
        for (ind, bp, coord), cell in zip(columns, row[n_index:]):
            cell = cell.strip()
            try:
                values[(ind, bp, coord)] = float(cell) if cell else math.nan
            except ValueError:
                raise FormatError(f"{path}, line {n}: {cell!r} is not a number") from None
        insts = []
        for ind in individuals:
            kps = []
            for bp in bodyparts:
                x, y = values.get((ind, bp, "x"), math.nan), values.get((ind, bp, "y"), math.nan)
                like = values.get((ind, bp, "likelihood"))
                if math.isnan(x) or math.isnan(y) or math.isinf(x) or math.isinf(y):
                    kps.append(Keypoint())
                elif like is not None and not math.isnan(like):
                    kps.append(Keypoint(x, y, Visibility.VISIBLE, Origin.PREDICTED,
                                        min(max(like, 0.0), 1.0)))
                else:
                    kps.append(Keypoint(x, y, Visibility.VISIBLE))
            insts.append(kps)
        images.append((image, insts))
    return bodyparts, images


def _project_csvs(root: Path, scorer: str | None) -> list[Path]:
    found = []
    for folder in sorted((root / "labeled-data").glob("*")):
        if not folder.is_dir() or folder.name.endswith("_labeled"):
            continue
        files = sorted(folder.glob("CollectedData_*.csv"))
        preferred = [f for f in files if scorer and f.name == f"CollectedData_{scorer}.csv"]
        found += preferred or files[:1]
    return found


def _root_for_csv(csv_path: Path, first_image: str | None) -> Path:
    for candidate in (csv_path.parent, *list(csv_path.parents)[:3]):
        if first_image and (candidate / first_image).exists():
            return candidate
    if first_image and first_image.startswith("labeled-data/") and len(csv_path.parents) > 2:
        return csv_path.parents[2]
    return csv_path.parent


def read_dlc(path: str | Path) -> Project:
    """A project from a DeepLabCut project (``config.yaml`` or its folder: every
    ``labeled-data/*/CollectedData_*.csv``) or from one such CSV. Image paths are relative
    to the DLC project folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    config: dict[str, Any] | None = None
    if path.suffix.lower() in (".yaml", ".yml"):
        config = _read_config(path)
        root = path.parent
        csvs = _project_csvs(root, config.get("scorer"))
        if not csvs:
            raise FormatError(f"{root}: no labeled-data/*/CollectedData_*.csv to import")
    elif path.suffix.lower() == ".csv":
        csvs = [path]
        root = path.parent
        for candidate in list(path.parents)[:3]:
            if (candidate / "config.yaml").is_file():
                config = _read_config(candidate / "config.yaml")
                break
    else:
        raise FormatError(f"{path}: expected a DeepLabCut config.yaml or CollectedData CSV")
    names: list[str] | None = None
    images: list[tuple[str, list[list[Keypoint]]]] = []
    for csv_path in csvs:
        bps, rows = _parse_csv(csv_path)
        if names is None:
            names = bps
        elif bps != names:
            raise FormatError(f"{csv_path}: body parts {bps} differ from {names} in {csvs[0]}")
        if config is None or path.suffix.lower() == ".csv":
            root = _root_for_csv(csv_path, rows[0][0] if rows else None)
        images += rows
    assert names is not None
    skeleton = []
    for edge in (config or {}).get("skeleton") or []:
        if not (isinstance(edge, list) and len(edge) == 2 and all(e in names for e in edge)):
            raise FormatError(f"{path}: skeleton edge {edge!r} names an unknown body part")
        skeleton.append((names.index(edge[0]), names.index(edge[1])))
    name = str((config or {}).get("Task") or "animal")
    try:
        schema = KeypointSchema(name, tuple(names), tuple(skeleton), infer_flip_pairs(names))
    except SchemaError as exc:
        raise FormatError(f"{path}: {exc}") from None
    frames = []
    for image, insts in images:
        kept = tuple(Instance(tuple(kps)) for kps in insts if any(kp.labelled for kp in kps))
        frames.append((image, None, None, ImageAnnotation(kept, imported_status(kept))))
    return project_from_frames(root, schema, frames, str(path))
