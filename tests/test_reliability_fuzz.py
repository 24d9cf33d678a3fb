"""Importer fuzz (hypothesis): malformed COCO and project files only ever raise the
importer's own error type (CocoFormatError / ProjectFileError), never OverflowError,
RecursionError, TypeError, ... 2 x 1,000 cases by default; ``-m longrun`` runs 2 x 20,000."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotator.domain import ImageStatus, Keypoint, KeypointSchema, Origin, Visibility
from annotator.domain.project import ImageRecord, Project
from annotator.io.coco import CocoFormatError, export_coco, import_coco
from annotator.io.project_file import ProjectFileError, load_project, project_to_dict

DEFAULT = 1000
LONG = int(os.environ.get("KP_FUZZ_LONG", "20000"))

scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=6),
    st.integers(min_value=-(10 ** 9), max_value=10 ** 9),
    st.integers(min_value=10 ** 20, max_value=10 ** 450),  # huge: 400-digit ids, overflow
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1.7976931348623157e308, 0.5, 2, -1, "12", "1e400"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=12)


def _coco_doc() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "b.png", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "cat", "supercategory": "animal",
                        "keypoints": ["nose", "left_eye", "right_eye"],
                        "skeleton": [[1, 2], [1, 3]]}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                         "keypoints": [10, 10, 2, 20, 20, 2, 0, 0, 0], "num_keypoints": 2,
                         "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0}],
    }


def _project_doc(root) -> dict:
    p = Project(str(root), [ImageRecord("a.png", 64, 48), ImageRecord("b.png")],
                KeypointSchema("cat", ("nose", "left_eye", "right_eye"), flip_pairs=((1, 2),)))
    p.set_keypoint("a.png", 0, Keypoint(1.5, 2.5, Visibility.VISIBLE))
    p.set_keypoint("a.png", 1, Keypoint(3, 4, Visibility.OCCLUDED, Origin.PREDICTED, 0.25))
    p.set_status("b.png", ImageStatus.REVIEWED)
    return project_to_dict(p)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _mutated(base: dict, data) -> bytes:  # noqa: ANN001
    doc = json.loads(json.dumps(base))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        where = data.draw(st.sampled_from(paths))
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        action = data.draw(st.sampled_from(["replace", "delete", "deep"]))
        if action == "delete":
            del parent[where[-1]]
        elif action == "deep":
            parent[where[-1]] = "DEEP"
        else:
            parent[where[-1]] = data.draw(values)
    text = json.dumps(doc, allow_nan=True)
    depth = data.draw(st.sampled_from([0, 0, 0, 50, 5000, 100_000]))
    text = text.replace('"DEEP"', "[" * depth + "]" * depth if depth else "1")
    raw = text.encode("utf-8", "surrogatepass")
    if data.draw(st.booleans()):
        raw = b"\xef\xbb\xbf" + raw  # a BOM is accepted
    cut = data.draw(st.sampled_from([None, None, None, 1, 10, -1, -20]))
    return raw if cut is None else raw[:cut]


def _fuzz_coco(tmp_path, data) -> None:  # noqa: ANN001
    path = tmp_path / "fuzz.json"
    path.write_bytes(_mutated(_coco_doc(), data))
    try:
        project = import_coco(path, tmp_path)
    except CocoFormatError:
        return
    try:
        doc = export_coco(project)
    except CocoFormatError as exc:  # labels on an image of unknown size whose file is absent
        assert "size is unknown" in str(exc), exc
        return
    json.dumps(doc, allow_nan=False)  # what was accepted exports as JSON


def _fuzz_project(tmp_path, data) -> None:  # noqa: ANN001
    path = tmp_path / "fuzz.kpproj.json"
    path.write_bytes(_mutated(_project_doc(tmp_path), data))
    try:
        load_project(path)
    except ProjectFileError:
        return


SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)


@settings(max_examples=DEFAULT, **SETTINGS)
@given(data=st.data())
def test_fuzz_coco_import(tmp_path_factory, data):
    _fuzz_coco(tmp_path_factory.mktemp("coco"), data)


@settings(max_examples=DEFAULT, **SETTINGS)
@given(data=st.data())
def test_fuzz_project_file(tmp_path_factory, data):
    _fuzz_project(tmp_path_factory.mktemp("proj"), data)


@pytest.mark.longrun
@settings(max_examples=LONG, **SETTINGS)
@given(data=st.data())
def test_fuzz_long_run(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("long")
    _fuzz_coco(tmp, data)
    _fuzz_project(tmp, data)


@pytest.mark.parametrize("text,needle", [
    ('{"images": [{"id": ' + "9" * 400 + ', "file_name": "a.png"}]}', "digits"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1e400}]}', "out of range"),
    ("[" * 100_000 + "]" * 100_000, "nested"),
    ('{"images": NaN}', "NaN"),
])
def test_known_bad_coco_inputs(tmp_path, text, needle):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(CocoFormatError, match=needle):
        import_coco(path, tmp_path)


def test_huge_coordinates_refused_and_bom_accepted(tmp_path):
    doc = _coco_doc()
    doc["annotations"][0]["keypoints"][0] = 1.7e308
    path = tmp_path / "x.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CocoFormatError, match="out of range"):
        import_coco(path, tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_coco_doc()).encode())
    assert len(import_coco(path, tmp_path)) == 2


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["schema"].update(keypoints="abc"), "schema.keypoints"),
    (lambda d: d["annotations"]["a.png"]["instances"][0]["keypoints"][0].__setitem__(0, "12"),
     "not a number"),
    (lambda d: d["annotations"]["a.png"]["instances"][0]["keypoints"][0].__setitem__(0, 1e300),
     "out of range"),
    (lambda d: d.update(images="a.png"), "images"),
])
def test_project_files_are_strictly_typed(tmp_path, edit, needle):
    doc = _project_doc(tmp_path)
    edit(doc)
    path = tmp_path / "p.kpproj.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProjectFileError, match=needle):
        load_project(path)


def test_project_file_with_bom_and_1e400(tmp_path):
    path = tmp_path / "p.kpproj.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_project_doc(tmp_path)).encode())
    assert len(load_project(path)) == 2
    path.write_text(json.dumps(_project_doc(tmp_path)).replace("1.5", "1e400"))
    with pytest.raises(ProjectFileError, match="out of range"):
        load_project(path)
