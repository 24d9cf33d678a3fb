"""Label Studio JSON tasks (keypoints, instance boxes, occlusion), written and read by hand.

sleap-io (0.9) writes Label Studio tasks without ``data.image`` (Label Studio cannot show
them), with pixel sizes where Label Studio expects percentages, and drops occlusion; its
reader needs a ``meta.video`` entry that Label Studio exports do not have. So this module
writes and reads the format itself:

- one task per image: ``data.image`` is the image path relative to the project's image
  root, after an optional prefix (``/data/local-files/?d=...`` for Label Studio's local
  storage);
- per instance a ``rectanglelabels`` region (its box, or the keypoints' bounds), per
  labelled keypoint a ``keypointlabels`` region related to its instance's box by a
  ``relation``; positions are percentages of ``original_width``/``original_height``;
- an occluded keypoint (v = 1) carries a per-region ``choices`` result ``occluded``
  (``visibility`` control); a missing keypoint (v = 0) has no region.

A labelling configuration that declares these controls, in the schema's keypoint order and
colours, is written next to the JSON (``<name>.label_config.xml``); the import reads the
keypoint order from it when present (Label Studio has no skeleton: edges are lost, and
left/right partners are inferred from names on import).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from xml.etree import ElementTree

from annotator.domain.annotation import ImageAnnotation, Instance, Keypoint, Origin, Visibility
from annotator.domain.project import Project
from annotator.domain.schema import KeypointSchema, SchemaError, infer_flip_pairs
from annotator.io.formats._common import (
    DEFAULT_EXPORT,
    MAX_NAME,
    ExportOptions,
    ExportReport,
    FormatError,
    Frame,
    ProgressFn,
    clip_box,
    export_frames,
    imported_status,
    instance_box,
    project_from_frames,
    read_dataset_text,
    read_input_bytes,
    staged_file,
    write_phase,
)
from annotator.io.freeing import take_apart
from annotator.io.jsonio import check_coordinate, loads_strict
from annotator.io.project_file import atomic_write_text

log = logging.getLogger(__name__)

POINT_SIZE = 0.6  # keypoint marker size in Label Studio (% of the image width)
KEYPOINT, INSTANCE, VISIBILITY, IMAGE = "keypoint", "instance", "visibility", "image"
OCCLUDED = "occluded"


def config_path(json_path: Path) -> Path:
    """Where the labelling configuration of ``json_path`` is written."""
    return json_path.with_name(json_path.stem + ".label_config.xml")


def label_config(schema: KeypointSchema) -> str:
    """A Label Studio labelling configuration for ``schema``."""
    view = ElementTree.Element("View")
    ElementTree.SubElement(view, "Image", name=IMAGE, value="$image", zoom="true")
    rect = ElementTree.SubElement(view, "RectangleLabels", name=INSTANCE, toName=IMAGE)
    ElementTree.SubElement(rect, "Label", value=schema.name)
    kps = ElementTree.SubElement(view, "KeyPointLabels", name=KEYPOINT, toName=IMAGE,
                                 smart="false")
    for name, color in zip(schema.keypoints, schema.colors):
        ElementTree.SubElement(kps, "Label", value=name, background=color)
    vis = ElementTree.SubElement(view, "Choices", name=VISIBILITY, toName=IMAGE,
                                 perRegion="true")
    ElementTree.SubElement(vis, "Choice", value=OCCLUDED)
    ElementTree.SubElement(view, "Relations")
    ElementTree.indent(view)
    return ElementTree.tostring(view, encoding="unicode") + "\n"


def _region(rid: str, kind: str, name: str, w: int, h: int, value: dict) -> dict[str, Any]:
    return {"id": rid, "type": kind, "from_name": name, "to_name": IMAGE,
            "original_width": w, "original_height": h, "image_rotation": 0, "value": value}


def _task(t: int, frame: Frame, schema: KeypointSchema,
          image_prefix: str) -> tuple[dict[str, Any], int]:
    """Label Studio task ``t`` for one exported image, and its number of instances."""
    w, h = frame.width, frame.height
    result: list[dict[str, Any]] = []
    for i, inst in enumerate(frame.instances):
        bx, by, bw, bh = clip_box(instance_box(inst, w, h), w, h)
        box_id = f"t{t}i{i}"
        result.append(_region(box_id, "rectanglelabels", INSTANCE, w, h, {
            "x": bx / w * 100, "y": by / h * 100, "width": bw / w * 100,
            "height": bh / h * 100, "rotation": 0, "rectanglelabels": [schema.name],
        }))
        for j, kp in enumerate(inst.keypoints):
            if not kp.labelled:
                continue
            kp_id = f"t{t}i{i}k{j}"
            pos = {"x": kp.x / w * 100, "y": kp.y / h * 100, "width": POINT_SIZE}
            result.append(_region(kp_id, "keypointlabels", KEYPOINT, w, h,
                                  {**pos, "keypointlabels": [schema.keypoints[j]]}))
            if kp.v == Visibility.OCCLUDED:
                result.append(_region(kp_id, "choices", VISIBILITY, w, h,
                                      {**pos, "choices": [OCCLUDED]}))
            result.append({"type": "relation", "from_id": kp_id, "to_id": box_id,
                           "direction": "right"})
    task = {
        "id": t,
        "data": {IMAGE: image_prefix + frame.path},
        "annotations": [{"result": result, "was_cancelled": False, "ground_truth": False}],
    }
    return task, len(frame.instances)


def write_label_studio(
    project: Project, out: str | Path, options: ExportOptions = DEFAULT_EXPORT,
    progress: ProgressFn | None = None,
) -> ExportReport:
    """Write ``project`` as Label Studio tasks (JSON) plus the labelling configuration."""
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise FormatError(f"{out}: Label Studio tasks are a .json file")
    schema = project.schema
    frames = export_frames(project, options, progress)
    written = write_phase(progress, project, len(frames))
    n_inst = 0
    try:
        # task by task into a staged file: the same bytes as json.dumps of the task list,
        # but no call (encoder, join, UTF-8 encode) holds the GIL for the whole document
        # (one json.dumps stalled the GUI 3.5 s at 10,000 x 3); a cancel leaves nothing
        with staged_file(out) as stage:
            with open(stage, "w", encoding="utf-8") as f:
                f.write("[")
                for t, frame in enumerate(frames, 1):
                    written(t - 1)
                    task, n = _task(t, frame, schema, options.image_prefix)
                    n_inst += n
                    f.write(("" if t == 1 else ", ") + json.dumps(task, ensure_ascii=False))
                f.write("]")
            written(len(frames))  # the last chance to cancel
        atomic_write_text(config_path(out), label_config(schema), backup=False)
    except OSError as exc:
        raise FormatError(f"{out}: cannot be written ({exc})") from None
    finally:
        n_frames = len(frames)
        take_apart(frames)  # not in one free at the return (see annotator.io.freeing)
    notes = []
    if schema.skeleton:
        notes.append("skeleton edges not kept (Label Studio has no skeleton)")
    return ExportReport(out, n_frames, n_inst, tuple(notes))


# ==================================================================== import
_UPLOAD = re.compile(r"^/?data/upload/\d+/")


def image_path_from_url(url: str, prefix: str = "") -> str:
    """The image's relative path in ``data.image``: without ``prefix``, Label Studio's
    local-files prefix, its upload folder or a URL's scheme and host."""
    if prefix and url.startswith(prefix):
        return url[len(prefix):]
    if "?d=" in url:
        return unquote(url.split("?d=", 1)[1])
    if _UPLOAD.match(url):
        return _UPLOAD.sub("", url)
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https", "s3", "gs", "azure-blob"):
        return unquote(parsed.path).lstrip("/")
    return url


def _config_order(json_path: Path) -> list[str] | None:
    cfg = config_path(json_path)
    if not os.path.lexists(cfg):
        return None
    text = read_dataset_text(cfg, json_path.parent, "labelling configuration", 16 << 20)
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise FormatError(f"{cfg}: not a readable labelling configuration ({exc})") from None
    for el in root.iter("KeyPointLabels"):
        return [lab.get("value", "") for lab in el.iter("Label")]
    return None


def _value(region: dict, where: str) -> dict:
    value = region.get("value", {})
    if not isinstance(value, dict):
        raise FormatError(f"{where}: region {region.get('id')!r}: 'value' is not an object")
    return value


def _labels(region: dict, key: str, where: str) -> list:
    labels = _value(region, where).get(key) or []
    if not isinstance(labels, list):
        raise FormatError(f"{where}: region {region.get('id')!r}: {key} {labels!r} is not "
                          "a list")
    return labels


def _number(region: dict, key: str, where: str) -> float:
    value = _value(region, where).get(key) if key in ("x", "y") else region.get(key)
    if value is None:
        raise FormatError(f"{where}: {key} is missing")
    return check_coordinate(value, f"{where}, {key}", FormatError)


def _side(region: dict, key: str, where: str) -> float:
    """``original_width`` or ``original_height``: at least one pixel."""
    value = _number(region, key, where)
    if value < 1:
        raise FormatError(f"{where}: {key} {value!r} is not a positive image size")
    return value


def _task_result(task: dict, where: str) -> tuple[list[dict], bool, float | None]:
    """The result list to import, whether it is a prediction, and the prediction score."""
    for key in ("annotations", "completions"):
        for ann in task.get(key) or []:
            if isinstance(ann, dict) and not ann.get("was_cancelled"):
                result = ann.get("result")
                if not isinstance(result, list):
                    raise FormatError(f"{where}: annotation result is not a list")
                return result, False, None
    for pred in task.get("predictions") or []:
        if isinstance(pred, dict) and isinstance(pred.get("result"), list):
            score = pred.get("score")
            ok = isinstance(score, (int, float)) and 0 <= score <= 1
            return pred["result"], True, float(score) if ok else None
    return [], False, None


def read_label_studio(
    path: str | Path, image_root: str | Path | None = None, image_prefix: str = ""
) -> Project:
    """A project from Label Studio JSON tasks. ``image_root`` (default: the JSON's folder)
    is where the paths in ``data.image`` (without ``image_prefix``) are found."""
    path = Path(path)
    source = str(path)
    raw = read_input_bytes(path, "Label Studio file")
    doc = loads_strict(raw, source, FormatError)
    if isinstance(doc, dict) and "data" in doc:
        doc = [doc]
    if not isinstance(doc, list):
        raise FormatError(f"{source}: expected a list of Label Studio tasks")
    order = _config_order(path)
    category = ""
    parsed = []
    seen_names: list[str] = list(order or [])
    for n, task in enumerate(doc):
        where = f"{source}: task {task.get('id', n) if isinstance(task, dict) else n}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise FormatError(f"{where}: not a task (no 'data' object)")
        url = task["data"].get(IMAGE)
        if not isinstance(url, str):
            url = next((v for v in task["data"].values() if isinstance(v, str)), None)
        if url is None:
            raise FormatError(f"{where}: data names no image")
        result, predicted, score = _task_result(task, where)
        boxes: dict[str, dict] = {}
        points: list[dict] = []
        occluded: set[str] = set()
        links: dict[str, str] = {}
        for r in result:
            if not isinstance(r, dict):
                raise FormatError(f"{where}: a result entry is not an object")
            kind = r.get("type")
            if kind == "rectanglelabels":
                boxes[str(r.get("id"))] = r
                labels = _labels(r, "rectanglelabels", where) or [""]
                category = category or str(labels[0])[:MAX_NAME]
            elif kind == "keypointlabels":
                labels = _labels(r, "keypointlabels", where)
                if len(labels) != 1 or not isinstance(labels[0], str):
                    raise FormatError(f"{where}: keypoint region {r.get('id')!r} needs one "
                                      "label")
                if order is not None and labels[0] not in order:
                    raise FormatError(f"{where}: keypoint {labels[0]!r} is not in "
                                      f"{config_path(path)}")
                if labels[0] not in seen_names:
                    seen_names.append(labels[0])
                points.append(r)
            elif kind == "choices":
                choices = _labels(r, "choices", where)
                if any(str(c).lower() == OCCLUDED for c in choices):
                    occluded.add(str(r.get("id")))
            elif kind == "relation":
                a, b = str(r.get("from_id")), str(r.get("to_id"))
                links[a], links[b] = b, a
        parsed.append((where, url, boxes, points, occluded, links, predicted, score))
    if not seen_names:
        raise FormatError(f"{source}: no keypoints in any task")
    try:
        schema = KeypointSchema(category or "object", tuple(seen_names), (),
                                infer_flip_pairs(seen_names))
    except SchemaError as exc:
        raise FormatError(f"{source}: {exc}") from None
    k = len(schema)
    frames = []
    for where, url, boxes, points, occluded, links, predicted, score in parsed:
        size: tuple[int, int] | None = None
        groups: dict[str, list[Keypoint | None]] = {bid: [None] * k for bid in boxes}
        loose: list[list[Keypoint | None]] = []
        for r in points:
            rid = str(r.get("id"))
            w = _side(r, "original_width", f"{where}, region {rid}")
            h = _side(r, "original_height", f"{where}, region {rid}")
            size = (int(w), int(h))
            x = _number(r, "x", f"{where}, region {rid}") * w / 100
            y = _number(r, "y", f"{where}, region {rid}") * h / 100
            v = Visibility.OCCLUDED if rid in occluded else Visibility.VISIBLE
            kp = (Keypoint(x, y, v, Origin.PREDICTED, score) if predicted
                  else Keypoint(x, y, v))
            j = schema.index(r["value"]["keypointlabels"][0])
            owner = links.get(rid)
            if owner in groups:
                slot = groups[owner]
            else:  # no instance box: a repeated name starts the next instance
                if not loose or loose[-1][j] is not None:
                    loose.append([None] * k)
                slot = loose[-1]
            if slot[j] is not None:
                raise FormatError(f"{where}: keypoint {schema.keypoints[j]!r} twice in one "
                                  "instance")
            slot[j] = kp
        insts = []
        for bid, slot in groups.items():
            r = boxes[bid]
            w = _side(r, "original_width", f"{where}, region {bid}")
            h = _side(r, "original_height", f"{where}, region {bid}")
            size = (int(w), int(h))
            val = _value(r, where)
            if not all(isinstance(val.get(k), (int, float)) for k in ("x", "y", "width",
                                                                       "height")):
                raise FormatError(f"{where}: box {bid!r} lacks x, y, width or height")
            box = tuple(check_coordinate(val[k] * s / 100, f"{where}, box {bid!r} {k}",
                                         FormatError)
                        for k, s in (("x", w), ("y", h), ("width", w), ("height", h)))
            inst = Instance(tuple(kp or Keypoint() for kp in slot))
            derived = (clip_box(instance_box(inst, int(w), int(h)), int(w), int(h))
                       if inst.num_labelled else None)
            same = derived is not None and all(
                abs(a - b) <= 1e-6 * max(w, h) for a, b in zip(box, derived))
            if box[2] > 0 and box[3] > 0 and not same:
                inst = Instance(inst.keypoints, box)
            insts.append(inst)
        insts += [Instance(tuple(kp or Keypoint() for kp in slot)) for slot in loose]
        rel = image_path_from_url(url, image_prefix)
        insts_t = tuple(insts)
        frames.append((rel, *(size or (None, None)),
                       ImageAnnotation(insts_t, imported_status(insts_t))))
    root = Path(image_root) if image_root is not None else path.parent
    return project_from_frames(root, schema, frames, source)
