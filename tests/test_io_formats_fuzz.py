"""Interchange-format fuzz (hypothesis): mutated YOLO pose, DeepLabCut, SLEAP and Label
Studio files only ever raise FormatError from ``import_dataset`` (COCO: see
test_reliability_fuzz.py), and what imports saves as a project. 1,000 cases per format by
default (a few seconds each); ``-m longrun`` runs 20,000 (``KP_FUZZ_LONG``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from annotator.io.formats import FormatError, import_dataset
from annotator.io.project_file import project_to_dict
from tests.test_reliability_fuzz import _mutated

DEFAULT = 1000
LONG = int(os.environ.get("KP_FUZZ_LONG", "20000"))
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)

TOKENS = [b"", b"0", b"-1", b"2", b"3", b"0.5", b"1e308", b"-1e308", b"1e400", b"nan", b"inf",
          b"-inf", b"abc", b"\x00", b"\xff\xfe", b"/", b"../x", b"..", b"[1, 2]", b"{a: 1}",
          b"[]", b"{}", b"- x", b":", b",", b"\n", b"\"", b"single", b"x", b"y", b"likelihood",
          b"individuals", b"images", b"99999999999999999999999", b"1" * 400, b"!!python/x"]


def _mutate_text(base: bytes, data) -> bytes:  # noqa: ANN001
    """``base`` with 1-3 token-level edits (replace, delete, duplicate, insert) and maybe
    cut short."""
    parts = [p for p in _split(base)]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, max(len(parts) - 1, 0)))
        op = data.draw(st.sampled_from(["replace", "replace", "delete", "dup", "insert"]))
        if not parts:
            parts = [b""]
        if op == "replace":
            parts[i] = data.draw(st.sampled_from(TOKENS) | st.binary(max_size=4))
        elif op == "delete":
            del parts[i]
        elif op == "dup":
            parts.insert(i, parts[i])
        else:
            parts.insert(i, data.draw(st.sampled_from(TOKENS)))
    raw = b"".join(parts)
    cut = data.draw(st.sampled_from([None, None, None, 5, -3]))
    return raw if cut is None else raw[:cut]


def _split(text: bytes) -> list[bytes]:
    """Tokens and the separators between them (joined back they are ``text``)."""
    out, cur = [], b""
    for ch in text:
        c = bytes([ch])
        if c in b" ,:\n[]":
            if cur:
                out.append(cur)
            out.append(c)
            cur = b""
        else:
            cur += c
    if cur:
        out.append(cur)
    return out


def _check(path: Path, **kw) -> None:
    try:
        project = import_dataset(path, **kw)
    except FormatError:
        return
    json.dumps(project_to_dict(project), allow_nan=False)  # what imports saves


def _png(path: Path, w: int = 40, h: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


# ----------------------------------------------------------------------- YOLO
YOLO_YAML = yaml.safe_dump({"path": ".", "train": "images/train", "val": "list.txt",
                            "kpt_shape": [2, 3], "flip_idx": [1, 0], "names": {0: "cat"},
                            "kpt_names": {0: ["left_ear", "right_ear"]},
                            "skeleton": [[0, 1]]}).encode()
YOLO_LABEL = b"0 0.5 0.5 0.4 0.4 0.25 0.5 2 0.75 0.5 1\n0 0.1 0.1 0.1 0.1 0 0 0 0.1 0.1 2\n"


def _fuzz_yolo(root: Path, data) -> None:  # noqa: ANN001
    if not (root / "images").exists():
        _png(root / "images" / "train" / "a.png")
        _png(root / "images" / "val" / "b.png")
        (root / "labels" / "train").mkdir(parents=True)
        (root / "labels" / "val").mkdir(parents=True)
    which = data.draw(st.sampled_from(["yaml", "label", "list", "both"]))
    (root / "data.yaml").write_bytes(_mutate_text(YOLO_YAML, data) if which in ("yaml", "both")
                                     else YOLO_YAML)
    (root / "labels" / "train" / "a.txt").write_bytes(
        _mutate_text(YOLO_LABEL, data) if which in ("label", "both") else YOLO_LABEL)
    (root / "labels" / "val" / "b.txt").write_bytes(YOLO_LABEL)
    (root / "list.txt").write_bytes(_mutate_text(b"images/val/b.png\n", data)
                                    if which == "list" else b"images/val/b.png\n")
    _check(root / "data.yaml")


# ------------------------------------------------------------------------ DLC
DLC_CONFIG = yaml.safe_dump({"Task": "mice", "scorer": "Lab", "multianimalproject": True,
                             "bodyparts": "MULTI!", "individuals": ["A1", "A2"],
                             "uniquebodyparts": ["corner"], "skeleton": [["head", "tail"]]}
                            ).encode()
DLC_CSV = (b"scorer,,,Lab,Lab,Lab,Lab,Lab,Lab,Lab,Lab,Lab,Lab\n"
           b"individuals,,,A1,A1,A1,A1,A2,A2,A2,A2,single,single\n"
           b"bodyparts,,,head,head,tail,tail,head,head,tail,tail,corner,corner\n"
           b"coords,,,x,y,x,y,x,y,x,y,x,y\n"
           b"labeled-data,v1,img0.png,1.5,2.5,3.0,4.0,10.0,11.0,12.0,13.0,0.5,0.25\n"
           b"labeled-data,v1,img1.png,5.0,6.0,7.0,8.0\n")


def _fuzz_dlc(root: Path, data) -> None:  # noqa: ANN001
    which = data.draw(st.sampled_from(["csv", "csv", "config"]))
    (root / "labeled-data" / "v1").mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_bytes(_mutate_text(DLC_CONFIG, data) if which == "config"
                                       else DLC_CONFIG)
    (root / "labeled-data" / "v1" / "CollectedData_Lab.csv").write_bytes(
        _mutate_text(DLC_CSV, data) if which == "csv" else DLC_CSV)
    _check(root if data.draw(st.booleans()) else
           root / "labeled-data" / "v1" / "CollectedData_Lab.csv")


# -------------------------------------------------------------- Label Studio
def _ls_doc() -> list:
    def region(rid, kind, value, name):
        return {"id": rid, "type": kind, "from_name": name, "to_name": "image",
                "original_width": 40, "original_height": 30, "value": value}
    result = [
        region("b", "rectanglelabels", {"x": 10, "y": 10, "width": 50, "height": 50,
                                        "rectanglelabels": ["cat"]}, "instance"),
        region("k1", "keypointlabels", {"x": 20, "y": 20, "keypointlabels": ["nose"]},
               "keypoint"),
        region("k1", "choices", {"x": 20, "y": 20, "choices": ["occluded"]}, "visibility"),
        {"type": "relation", "from_id": "k1", "to_id": "b"},
        region("k2", "keypointlabels", {"x": 30, "y": 25, "keypointlabels": ["tail"]},
               "keypoint"),
    ]
    return [{"id": 1, "data": {"image": "/data/local-files/?d=a.png"},
             "annotations": [{"result": result}]},
            {"id": 2, "data": {"image": "b.png"},
             "predictions": [{"score": 0.5, "result": result[1:2]}]}]


def _fuzz_label_studio(root: Path, data) -> None:  # noqa: ANN001
    path = root / "tasks.json"
    path.write_bytes(_mutated({"tasks": _ls_doc()}, data).replace(b'{"tasks": ', b"", 1))
    _check(path)


# ---------------------------------------------------------------------- SLEAP
def _base_slp(root: Path) -> Path:
    sio = pytest.importorskip("sleap_io")
    _png(root / "im0.png")
    _png(root / "im1.png")
    sk = sio.Skeleton(nodes=["a", "b", "c"], edges=[("a", "b")], symmetries=[("b", "c")])
    video = sio.Video(filename=[str(root / "im0.png"), str(root / "im1.png")],
                      open_backend=False, backend_metadata={"shape": (2, 30, 40, 3)})
    frames = [sio.LabeledFrame(video=video, frame_idx=i, instances=[
        sio.Instance.from_numpy(np.array([[1.0, 2.0], [3.0, 4.0], [np.nan, np.nan]]),
                                skeleton=sk),
        sio.PredictedInstance.from_numpy(np.array([[5.0, 6.0], [7.0, 8.0], [9.0, 9.0]]),
                                         point_scores=np.array([0.5, 0.9, 2.0]), score=0.7,
                                         skeleton=sk)]) for i in range(2)]
    path = root / "base.slp"
    sio.save_slp(sio.Labels(labeled_frames=frames, skeletons=[sk]), str(path), embed=False,
                 verbose=False)
    return path


POINT_VALUES = [np.inf, -np.inf, np.nan, 1e308, -1e308, 1e7, -5.0, 0.0, 2.5]


def _fuzz_sleap(root: Path, data) -> None:  # noqa: ANN001
    import h5py

    base = root / "base.slp"
    if not base.exists():
        _base_slp(root)
    path = root / "fuzz.slp"
    shutil.copyfile(base, path)
    with h5py.File(path, "r+") as f:
        which = data.draw(st.sampled_from(["videos", "points", "pred", "both", "bytes"]))
        if which in ("videos", "both"):
            videos = [json.loads(v) for v in f["videos_json"][:]]
            text = _mutated({"v": videos}, data).decode("utf-8", "replace")
            try:
                mutated = json.loads(text)["v"]
                rows = [json.dumps(v) for v in mutated] if isinstance(mutated, list) else [text]
            except (ValueError, KeyError, TypeError, RecursionError):
                rows = [text]
            del f["videos_json"]
            f.create_dataset("videos_json", data=np.array(rows, dtype=object),
                             dtype=h5py.string_dtype())
        for name in {"points": ["points"], "pred": ["pred_points"],
                     "both": ["points"]}.get(which, []):
            pts = f[name][:]
            for _ in range(data.draw(st.integers(1, 3))):
                i = data.draw(st.integers(0, len(pts) - 1))
                field = data.draw(st.sampled_from(["x", "y"] + (["score"] if "pred" in name
                                                                   else [])))
                pts[field][i] = data.draw(st.sampled_from(POINT_VALUES))
            f[name][:] = pts
    if which == "bytes":  # damage the HDF5 file itself
        raw = bytearray(path.read_bytes())
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        path.write_bytes(bytes(raw[: data.draw(st.sampled_from([len(raw), len(raw) // 2]))]))
    _check(path, image_root=root)


# ----------------------------------------------------------------------- runs
FUZZERS = {"yolo-pose": _fuzz_yolo, "dlc": _fuzz_dlc, "label-studio": _fuzz_label_studio,
           "sleap": _fuzz_sleap}


@pytest.mark.parametrize("fmt", sorted(FUZZERS))
def test_fuzz_import(tmp_path_factory, fmt):
    root = tmp_path_factory.mktemp(fmt)

    @settings(max_examples=DEFAULT, **SETTINGS)
    @given(data=st.data())
    def run(data):  # noqa: ANN001
        FUZZERS[fmt](root, data)

    run()


@pytest.mark.longrun
@pytest.mark.parametrize("fmt", sorted(FUZZERS))
def test_fuzz_import_long_run(tmp_path_factory, fmt):
    root = tmp_path_factory.mktemp(fmt)

    @settings(max_examples=LONG, **SETTINGS)
    @given(data=st.data())
    def run(data):  # noqa: ANN001
        FUZZERS[fmt](root, data)

    run()
