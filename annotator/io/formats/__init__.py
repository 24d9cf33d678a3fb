"""Interchange formats: COCO (native), YOLO pose, DeepLabCut, SLEAP and Label Studio.

``export_project`` writes a project in one of :data:`FORMATS`; ``import_dataset`` reads any
of them (and project files) into a new project; ``detect_format`` tells which a path is.
SLEAP goes through the optional sleap-io package (``keypoint-annotator[formats]``), imported
only when a SLEAP file is read or written; the other formats are written by this package.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from annotator.domain.project import Project
from annotator.io.formats._common import (
    DEFAULT_EXPORT,
    FORMATS_EXTRA,
    ExportOptions,
    ExportReport,
    FormatError,
    ProgressFn,
    read_input_bytes,
)

FORMATS = ("coco", "yolo-pose", "dlc", "sleap", "label-studio")
INPUT_FORMATS = ("project", *FORMATS)

__all__ = [
    "FORMATS",
    "FORMATS_EXTRA",
    "INPUT_FORMATS",
    "ExportOptions",
    "ExportReport",
    "FormatError",
    "ProgressFn",
    "default_output_name",
    "detect_format",
    "export_project",
    "import_dataset",
]


def default_output_name(fmt: str, stem: str) -> str:
    """A file or folder name for an export of ``fmt`` from a project called ``stem``."""
    return {
        "coco": f"{stem}_coco.json",
        "yolo-pose": f"{stem}_yolo",
        "dlc": f"{stem}_dlc",
        "sleap": f"{stem}.slp",
        "label-studio": f"{stem}_label_studio.json",
    }[fmt]


def detect_format(path: str | Path) -> str:
    """Which of :data:`INPUT_FORMATS` ``path`` holds (from its name, else its content)."""
    from annotator.io.project_file import FORMAT_NAME

    path = Path(path)
    if path.is_dir():
        if (path / "data.yaml").is_file():
            return "yolo-pose"
        if (path / "config.yaml").is_file():
            return "dlc"
        raise FormatError(f"{path}: a folder with neither data.yaml (YOLO pose) nor "
                          "config.yaml (DeepLabCut)")
    if not path.exists():
        raise FormatError(f"{path}: file not found")
    from annotator.io.store import is_store

    if is_store(path):
        return "project"
    suffix = path.suffix.lower()
    if suffix == ".slp":
        return "sleap"
    if suffix == ".csv":
        return "dlc"
    if suffix in (".yaml", ".yml"):
        text = read_input_bytes(path, "YAML file").decode("utf-8", errors="replace")
        if "kpt_shape" in text:
            return "yolo-pose"
        if "bodyparts" in text:
            return "dlc"
        raise FormatError(f"{path}: a YAML file that is neither a YOLO pose data.yaml "
                          "(kpt_shape) nor a DeepLabCut config.yaml (bodyparts)")
    if suffix == ".json":
        from annotator.io.jsonio import loads_strict

        doc = loads_strict(read_input_bytes(path, "JSON file"), str(path), FormatError)
        if isinstance(doc, dict) and doc.get("format") == FORMAT_NAME:
            return "project"
        if isinstance(doc, dict) and "images" in doc and "annotations" in doc:
            return "coco"
        if isinstance(doc, list) or (isinstance(doc, dict) and "data" in doc):
            return "label-studio"
        raise FormatError(f"{path}: JSON that is neither a project, COCO keypoints nor "
                          "Label Studio tasks")
    raise FormatError(f"{path}: unknown format (expected .kpproj, .kpproj.json, COCO .json, "
                      "Label Studio .json, .slp, a DLC .csv/config.yaml or a YOLO data.yaml)")


#: format -> (module of this package, name) of its ``read_<name>`` and ``write_<name>``,
#: imported on first use (sleap-io is optional)
_MODULES = {"yolo-pose": ("yolo", "yolo_pose"), "dlc": ("dlc", "dlc"),
            "sleap": ("sleap", "sleap"), "label-studio": ("label_studio", "label_studio")}


def _handler(fmt: str, verb: str) -> Any:
    module, name = _MODULES[fmt]
    return getattr(importlib.import_module(f"{__name__}.{module}"), f"{verb}_{name}")


def import_dataset(
    path: str | Path,
    fmt: str | None = None,
    image_root: str | Path | None = None,
    image_prefix: str = "",
    category: str | None = None,
) -> Project:
    """A new project from ``path`` in format ``fmt`` (detected when None). ``image_root``
    is the dataset folder for COCO, Label Studio, YOLO pose and SLEAP (default: the file's
    folder): nothing outside it is read or, on export, copied. ``image_prefix`` is stripped
    from Label Studio image URLs. ``category`` picks the keypoint category of a COCO file
    that has several (its name or id). Every failure is a :class:`FormatError`."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    try:
        return _import(path, fmt, image_root, image_prefix, category)
    except FormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            RecursionError, UnicodeError, OSError) as exc:
        # a malformed file that slipped past the importers' own checks: still our error
        raise FormatError(f"{path}: malformed content ({type(exc).__name__}: {exc})"
                          ) from None


def _import(path: Path, fmt: str, image_root: str | Path | None, image_prefix: str,
            category: str | None) -> Project:
    if category is not None and fmt != "coco":
        raise FormatError(f"{path}: --category is for COCO files; a {fmt} dataset has one "
                          "keypoint category")
    if fmt == "project":
        from annotator.io.project_file import ProjectFileError, load_project

        try:
            return load_project(path)
        except ProjectFileError as exc:
            raise FormatError(str(exc)) from None
    if fmt == "coco":
        from annotator.io.coco import CocoFormatError, import_coco

        try:
            chosen: str | int | None = category
            if category is not None and category.isdigit():
                chosen = int(category)  # an id; a name is tried too
            try:
                return import_coco(path, image_root, chosen)
            except CocoFormatError:
                if chosen == category:
                    raise
                return import_coco(path, image_root, category)
        except CocoFormatError as exc:
            raise FormatError(str(exc)) from None
    if fmt == "yolo-pose":
        from annotator.io.formats.yolo import read_yolo_pose

        return read_yolo_pose(path, image_root)
    if fmt == "dlc":
        from annotator.io.formats.dlc import read_dlc
        from annotator.io.video_formats import dlc_video_frames

        return dlc_video_frames(read_dlc(path))
    if fmt == "sleap":
        from annotator.io.formats.sleap import read_sleap
        from annotator.io.video_formats import is_video_slp, read_sleap_video

        return read_sleap_video(path) if is_video_slp(path) else read_sleap(path, image_root)
    if fmt == "label-studio":
        from annotator.io.formats.label_studio import read_label_studio

        return read_label_studio(path, image_root, image_prefix)
    raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(INPUT_FORMATS)}")


def export_project(
    project: Project, fmt: str, out: str | Path, options: ExportOptions = DEFAULT_EXPORT,
    progress: ProgressFn | None = None,
) -> ExportReport:
    """Write ``project`` to ``out`` in format ``fmt`` (one of :data:`FORMATS`).
    ``progress(done, total)`` is called now and then; an exception it raises (a cancel)
    stops the export and leaves nothing at ``out``."""
    from annotator.io.formats._common import refuse_symlink

    out = Path(out)
    refuse_symlink(out)
    if any(r.video is not None for r in project.images):  # frames decoded on export
        from annotator.io.video_formats import export_video_project

        return export_video_project(project, fmt, out, options, progress)
    if fmt == "coco":
        from annotator.io.coco import ExportChoice, ExportScope, write_coco

        if not options.include_predictions:
            choice = ExportChoice(ExportScope.REVIEWED)
        elif options.min_confidence is None:
            choice = ExportChoice(ExportScope.PREDICTIONS)
        else:
            choice = ExportChoice(ExportScope.CONFIDENT, options.min_confidence)
        doc = write_coco(project, out, choice, progress)
        return ExportReport(out, len(doc["images"]), len(doc["annotations"]))
    if fmt in _MODULES:
        return _handler(fmt, "write")(project, out, options, progress)
    raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
