"""DeepLabCut projects (labelled-frames layout), written and read by hand.

sleap-io (0.9) writes DLC CSV with invented image names (``img0000.png``) and no
``config.yaml``, and reads only frames whose image files it finds, renumbered per folder;
so this module writes and reads the layout itself::

    OUT/config.yaml                                  bodyparts, skeleton, individuals
    OUT/labeled-data/<folder>/<image name>           copies of the project's images
    OUT/labeled-data/<folder>/CollectedData_<scorer>.csv

``<folder>`` is the video folder for images of a DLC project (``labeled-data/<video>/``),
else the image's folder in the project (``/`` written as ``__``; ``images`` for top-level
images). The CSV has DLC's header rows (scorer, [individuals,] bodyparts, coords), a
three-column row index (``labeled-data``, folder, file name) and positions in full
(Python's shortest form, as pandas writes them). Projects with more than one instance on
some image are written as multi-animal (individuals ``animal1`` ...). When the project's
images live in a DLC project (its ``config.yaml`` is in the image root), its scorer,
individual names, unique body parts, index form and other settings are kept, so a DLC
project comes back as it was (DeepLabCut's openfield example: the same CSV bytes).

Unique body parts (maDLC's individual ``single``) are read as an instance of their own and
written back as such. DLC has no visibility flag: a point has coordinates or is empty.
Occluded points are written with their coordinates (``drop_occluded`` leaves them empty
instead) and every point read back is visible (v = 2). DLC's ``.h5`` copy of the CSV is
not written (it needs PyTables); ``deeplabcut.convertcsv2h5(config)`` makes it. Boxes are
not kept.
"""

from __future__ import annotations

import csv
import datetime
import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotator.domain.annotation import ImageAnnotation, Instance, Keypoint, Origin, Visibility
from annotator.domain.paths import PathEscapeError, normalize_relpath
from annotator.domain.project import Project
from annotator.domain.schema import KeypointSchema, SchemaError, infer_flip_pairs
from annotator.io.formats._common import (
    DEFAULT_EXPORT,
    ExportOptions,
    ExportReport,
    FormatError,
    Frame,
    ProgressFn,
    copy_image,
    export_frames,
    imported_status,
    load_yaml,
    project_from_frames,
    read_dataset_text,
    require_yaml,
    staged_folder,
    write_phase,
)
from annotator.io.freeing import take_apart
from annotator.io.jsonio import check_coordinate

log = logging.getLogger(__name__)

SCORER = "annotator"


@dataclass(frozen=True)
class DlcProfile:
    """What a DeepLabCut project that a project's images live in says about itself, kept
    on export: scorer, individual names, unique body parts, the CSV's index form and the
    rest of its ``config.yaml``."""

    scorer: str = SCORER
    multi: bool = False
    individuals: tuple[str, ...] = ()
    unique: tuple[str, ...] = ()
    index_columns: int = 3
    config: dict[str, Any] = field(default_factory=dict)


def read_profile(root: Path) -> DlcProfile | None:
    """The :class:`DlcProfile` of a DLC project folder ``root`` (None when it is not one
    or its ``config.yaml`` cannot be read)."""
    cfg_path = root / "config.yaml"
    if not cfg_path.is_file():
        return None
    try:
        config = _read_config(cfg_path, root)
    except FormatError as exc:
        log.warning("DeepLabCut settings of %s not kept: %s", root, exc)
        return None
    scorer = config.get("scorer")
    scorer = scorer if isinstance(scorer, str) and scorer else SCORER
    multi = bool(config.get("multianimalproject"))
    individuals = config.get("individuals") if multi else []
    unique = config.get("uniquebodyparts") if multi else []
    index_columns = 3
    csvs = _project_csvs(root, scorer)
    if csvs:
        try:
            rows = _csv_rows(csvs[0], root)
        except FormatError:
            rows = []
        n_header = 4 if len(rows) > 1 and rows[1][:1] == ["individuals"] else 3
        if len(rows) > n_header and rows[n_header - 1][:1] == ["coords"]:
            coords = rows[n_header - 1]
            index_columns = next((j for j, c in enumerate(coords) if j and c), 3)
    return DlcProfile(
        scorer, multi,
        tuple(str(v) for v in individuals) if isinstance(individuals, list) else (),
        tuple(str(v) for v in unique) if isinstance(unique, list) else (),
        1 if index_columns == 1 else 3, config,
    )


def _folder_of(path: str) -> str:
    parts = Path(path).parts
    if len(parts) == 3 and parts[0] == "labeled-data":  # a DLC project's own layout
        return parts[1]
    parent = Path(path).parent.as_posix()
    return "images" if parent in ("", ".") else parent.replace("/", "__")


def _config(schema: KeypointSchema, out: Path, individuals: list[str], unique: list[str],
            folders: dict[str, Frame], profile: DlcProfile | None) -> dict[str, Any]:
    names = [n for n in schema.keypoints if n not in unique]
    multi = bool(individuals)
    doc: dict[str, Any] = {
        "Task": schema.name,
        "scorer": profile.scorer if profile else SCORER,
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
        "skeleton": [[schema.keypoints[a], schema.keypoints[b]] for a, b in schema.skeleton],
        "skeleton_color": "black",
        "pcutoff": 0.6, "dotsize": 12, "alphavalue": 0.7, "colormap": "rainbow",
        "TrainingFraction": [0.95], "iteration": 0,
        "default_net_type": "resnet_50", "default_augmenter": "default",
        "snapshotindex": -1, "batch_size": 8,
        "cropping": False, "x1": 0, "x2": 640, "y1": 277, "y2": 624,
        "corner2move2": [50, 50], "move2corner": True,
    }
    if profile is not None:  # the source project's own settings, with what we changed
        changed = ("scorer", "multianimalproject", "project_path", "video_sets", "bodyparts",
                   "skeleton")
        doc = {**profile.config, **{k: doc[k] for k in changed}}
    if multi:
        doc["individuals"] = individuals
        doc["uniquebodyparts"] = unique
        doc["multianimalbodyparts"] = names
    return doc


def _number(value: float) -> str:
    """A position in full, in the shortest form that reads back the same (as DeepLabCut's
    pandas writes it: ``250.05599999999998``), so a DLC file's values come back verbatim."""
    return repr(float(value))


def _value(kp: Keypoint, drop_occluded: bool) -> tuple[str, str]:
    if not kp.labelled or (drop_occluded and kp.v == Visibility.OCCLUDED):
        return "", ""
    return _number(kp.x), _number(kp.y)


def _slots(frame: Frame, unique_idx: set[int]) -> tuple[list[Instance], Instance | None]:
    """The frame's animals and its instance of unique body parts (one whose labelled
    points are all unique body parts), when the project has unique body parts."""
    if not unique_idx:
        return list(frame.instances), None
    animals, single = [], None
    for inst in frame.instances:
        labelled = {j for j, kp in enumerate(inst.keypoints) if kp.labelled}
        if single is None and labelled and labelled <= unique_idx:
            single = inst
        else:
            animals.append(inst)
    return animals, single


def write_dlc(
    project: Project, out: str | Path, options: ExportOptions = DEFAULT_EXPORT,
    progress: ProgressFn | None = None,
) -> ExportReport:
    """Write ``project`` as a DeepLabCut project folder ``out`` (labelled frames). When the
    project's images live in a DeepLabCut project, its scorer, individual names, unique
    body parts, CSV index form and settings are kept."""
    yaml = require_yaml()
    out = Path(out)
    frames = export_frames(project, options, progress)
    written = write_phase(progress, project, len(frames))
    schema = project.schema
    profile = read_profile(Path(project.image_root))
    scorer = profile.scorer if profile else SCORER
    unique = [n for n in (profile.unique if profile else ()) if n in schema.keypoints]
    unique_idx = {schema.index(n) for n in unique}
    animal_idx = [j for j in range(len(schema)) if j not in unique_idx]
    slots = {f.path: _slots(f, unique_idx) for f in frames}
    most = max((len(a) for a, _ in slots.values()), default=0)
    multi = most > 1 or bool(unique) or bool(profile and profile.multi)
    named = list(profile.individuals) if profile else []
    individuals = [named[i] if i < len(named) else f"animal{i + 1}"
                   for i in range(max(most, 1 if multi else 0, len(named) if multi else 0))]
    if not multi:
        individuals = []
    n_slots = max(len(individuals), 1)
    index_columns = profile.index_columns if profile else 3
    groups: dict[str, list[Frame]] = {}
    for frame in frames:
        groups.setdefault(_folder_of(frame.path), []).append(frame)
    occluded = dropped = images_done = 0
    n_frames, n_inst = len(frames), sum(len(f.instances) for f in frames)
    try:
        with staged_folder(out, "DeepLabCut project") as stage:
            for folder, group in groups.items():
                names_seen: set[str] = set()
                lead = [""] * (index_columns - 1)
                header: list[list[str]] = [["scorer", *lead]]
                if individuals:
                    header.append(["individuals", *lead])
                header += [["bodyparts", *lead], ["coords", *lead]]
                columns = [(individuals[s] if individuals else "", j)
                           for s in range(n_slots) for j in animal_idx]
                columns += [("single", j) for j in sorted(unique_idx)]
                for ind, j in columns:
                    for coord in ("x", "y"):
                        header[0].append(scorer)
                        if individuals:
                            header[1].append(ind)
                        header[-2].append(schema.keypoints[j])
                        header[-1].append(coord)
                folder_dir = stage / "labeled-data" / folder
                folder_dir.mkdir(parents=True, exist_ok=True)
                # row by row into the file: one string of all rows, or the C writer given them
                # all, holds the GIL for a third of a second at 100,000 images
                with open(folder_dir / f"CollectedData_{scorer}.csv", "w", encoding="utf-8",
                          newline="") as csv_file:
                    out_csv = csv.writer(csv_file, lineterminator="\n")
                    out_csv.writerows(header)
                    for frame in group:
                        file_name = Path(frame.path).name
                        if file_name in names_seen:  # cannot happen: one folder, unique names
                            raise FormatError(f"image {frame.path!r} is listed twice")
                        names_seen.add(file_name)
                        written(images_done)  # may raise: a cancel removes the staged folder
                        images_done += 1
                        copy_image(frame.source, folder_dir / file_name)
                        row = ([f"labeled-data/{folder}/{file_name}"] if index_columns == 1
                               else ["labeled-data", folder, file_name])
                        animals, single = slots[frame.path]
                        for ind, j in columns:
                            if ind == "single":
                                inst = single
                            else:
                                s = individuals.index(ind) if individuals else 0
                                inst = animals[s] if s < len(animals) else None
                            kp = inst.keypoints[j] if inst is not None else Keypoint()
                            if kp.v == Visibility.OCCLUDED:
                                occluded += 1
                                dropped += options.drop_occluded
                            row += _value(kp, options.drop_occluded)
                        out_csv.writerow(row)
            first = {name: group[0] for name, group in groups.items()}
            text = yaml.safe_dump(_config(schema, out, individuals, unique, first, profile),
                                  sort_keys=False, allow_unicode=True, default_flow_style=None)
            (stage / "config.yaml").write_text(text, encoding="utf-8")
            written(len(frames))
    finally:  # not in one free at the return (see annotator.io.freeing)
        take_apart(slots, groups, frames)
    notes = []
    if occluded and not options.drop_occluded:
        notes.append(f"{occluded} occluded keypoint(s) written as labelled (DLC has no "
                     "occluded flag)")
    if dropped:
        notes.append(f"{dropped} occluded keypoint(s) left out (DLC has no occluded flag)")
    return ExportReport(out, n_frames, n_inst, tuple(notes))


# ==================================================================== import
def _read_config(path: Path, root: Path) -> dict[str, Any]:
    require_yaml()
    text = read_dataset_text(path, root, "DeepLabCut config.yaml")
    doc = load_yaml(text, str(path))
    if not isinstance(doc, dict) or "bodyparts" not in doc:
        raise FormatError(f"{path}: not a DeepLabCut config.yaml (no bodyparts)")
    return doc


def _csv_rows(path: Path, root: Path) -> list[list[str]]:
    text = read_dataset_text(path, root, "labels CSV")
    try:
        return list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise FormatError(f"{path}: cannot be read as CSV ({exc})") from None


def _parse_csv(
    path: Path, root: Path
) -> tuple[list[str], list[tuple[str, list[list[Keypoint]]]]]:
    """Body part names (the animals' ones, then the unique ones) and, per image, its
    instances' keypoints: one per individual, then one of the unique body parts
    (DeepLabCut's individual ``single``) when the file has them."""
    rows = _csv_rows(path, root)
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
    width = len(coords)
    header = [r + [""] * (width - len(r)) for r in rows[:n_header]]  # pandas pads them too
    columns = []
    for j in range(n_index, width):
        ind, bp, coord = header[1][j] if multi else "", header[n_header - 2][j], coords[j]
        if coord not in ("x", "y", "likelihood"):
            raise FormatError(f"{path}: unknown coordinate {coord!r} in the coords row")
        if not bp:
            raise FormatError(f"{path}: column {j + 1} names no body part")
        columns.append((ind, bp, coord))
    animal_parts: list[str] = []
    unique_parts: list[str] = []
    individuals: list[str] = []
    for ind, bp, _ in columns:
        if ind == "single":  # maDLC unique body parts: kept as an instance of their own
            if bp not in unique_parts:
                unique_parts.append(bp)
            continue
        if bp not in animal_parts:
            animal_parts.append(bp)
        if ind not in individuals:
            individuals.append(ind)
    bodyparts = animal_parts + [bp for bp in unique_parts if bp not in animal_parts]
    owners = individuals + (["single"] if unique_parts else [])
    images = []
    for n, row in enumerate(rows[n_header:], n_header + 1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > width:
            raise FormatError(f"{path}, line {n}: {len(row)} cells, expected at most {width}")
        row = row + [""] * (width - len(row))  # trailing empty cells left off (as pandas)
        image = "/".join(c for c in row[:n_index] if c).replace("\\", "/")
        values: dict[tuple[str, str, str], float] = {}
        for (ind, bp, coord), cell in zip(columns, row[n_index:]):
            cell = cell.strip()
            try:
                values[(ind, bp, coord)] = float(cell) if cell else math.nan
            except ValueError:
                raise FormatError(f"{path}, line {n}: {cell[:40]!r} is not a number") from None
        insts = []
        for ind in owners:
            kps = []
            for bp in bodyparts:
                x, y = values.get((ind, bp, "x"), math.nan), values.get((ind, bp, "y"), math.nan)
                like = values.get((ind, bp, "likelihood"))
                if math.isnan(x) or math.isnan(y) or math.isinf(x) or math.isinf(y):
                    kps.append(Keypoint())
                    continue
                where = f"{path}, line {n}, {bp}"
                check_coordinate(x, f"{where} x", FormatError)
                check_coordinate(y, f"{where} y", FormatError)
                if like is not None and not math.isnan(like):
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
    try:
        first = normalize_relpath(first_image) if first_image else None
    except PathEscapeError:
        first = None  # refused with its row later
    for candidate in (csv_path.parent, *list(csv_path.parents)[:3]):
        if first and os.path.lexists(candidate / first):
            return candidate
    if first and first.startswith("labeled-data/") and len(csv_path.parents) > 2:
        return csv_path.parents[2]
    return csv_path.parent


def read_dlc(path: str | Path) -> Project:
    """A project from a DeepLabCut project (``config.yaml`` or its folder: every
    ``labeled-data/*/CollectedData_*.csv``) or from one such CSV. Image paths are relative
    to the DLC project folder; nothing outside it is read."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.is_file():
        raise FormatError(f"{path}: not a regular file; not read" if os.path.lexists(path)
                          else f"{path}: file not found")
    config: dict[str, Any] | None = None
    if path.suffix.lower() in (".yaml", ".yml"):
        root = path.parent
        config = _read_config(path, root)
        csvs = _project_csvs(root, config.get("scorer"))
        if not csvs:
            raise FormatError(f"{root}: no labeled-data/*/CollectedData_*.csv to import")
    elif path.suffix.lower() == ".csv":
        csvs = [path]
        root = path.parent
        for candidate in list(path.parents)[:3]:
            if (candidate / "config.yaml").is_file():
                try:
                    config = _read_config(candidate / "config.yaml", candidate)
                except FormatError as exc:  # the CSV alone still reads
                    log.warning("%s", exc)
                break
    else:
        raise FormatError(f"{path}: expected a DeepLabCut config.yaml or CollectedData CSV")
    names: list[str] | None = None
    images: list[tuple[str, list[list[Keypoint]]]] = []
    for csv_path in csvs:
        single_csv = path.suffix.lower() == ".csv"
        bps, rows = _parse_csv(csv_path, csv_path.parent if single_csv else root)
        if names is None:
            names = bps
        elif bps != names:
            raise FormatError(f"{csv_path}: body parts {bps} differ from {names} in {csvs[0]}")
        if single_csv:
            root = _root_for_csv(csv_path, rows[0][0] if rows else None)
        images += rows
    assert names is not None
    skeleton = []
    raw_skeleton = (config or {}).get("skeleton") or []
    if not isinstance(raw_skeleton, list):
        raise FormatError(f"{path}: skeleton {raw_skeleton!r} is not a list of edges")
    for edge in raw_skeleton:
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
