from collections.abc import Mapping

import pytest

from annotator.domain import (
    ImageAnnotation,
    ImageRecord,
    ImageStatus,
    Instance,
    Keypoint,
    KeypointSchema,
    Origin,
    PathEscapeError,
    Project,
    SchemaError,
    Visibility,
)
from annotator.domain.history import Command, UndoStack


def project() -> Project:
    schema = KeypointSchema("cat", ("nose", "left_eye", "right_eye"), flip_pairs=((1, 2),))
    return Project("/data", [ImageRecord("a.jpg"), ImageRecord("sub/b.jpg")], schema)


def test_place_move_undo_redo():
    p = project()
    seen = []
    p.subscribe(seen.append)
    p.set_keypoint("a.jpg", 0, Keypoint(10, 20, Visibility.VISIBLE))
    assert p.status("a.jpg") == ImageStatus.REFERENCE
    assert p.annotation("a.jpg").instances[0].keypoints[0].x == 10
    p.move_keypoint("a.jpg", 0, 11, 21, drag_id=1)
    p.move_keypoint("a.jpg", 0, 12, 22, drag_id=1)  # same drag: one undo step
    assert p.annotation("a.jpg").instances[0].keypoints[0].x == 12
    assert p.undo() == "Move nose"
    assert p.annotation("a.jpg").instances[0].keypoints[0].x == 10
    p.redo()
    assert p.annotation("a.jpg").instances[0].keypoints[0].x == 12
    p.undo()
    p.undo()
    assert p.annotation("a.jpg") == ImageAnnotation()
    assert p.undo() is None
    assert seen and all(isinstance(s, frozenset) for s in seen)


def test_moving_a_prediction_makes_it_reviewed():
    p = project()
    pred = Instance((Keypoint(1, 1, 2, Origin.PREDICTED, 0.3),) * 3)
    p.set_annotation("a.jpg", ImageAnnotation((pred,), ImageStatus.PREDICTED), "predict")
    p.move_keypoint("a.jpg", 1, 5, 5)
    kp = p.annotation("a.jpg").instances[0].keypoints[1]
    assert kp.origin == Origin.REVIEWED and kp.confidence is None
    assert p.annotation("a.jpg").worst_confidence() == pytest.approx(0.3)
    p.set_status("a.jpg", ImageStatus.REVIEWED)
    assert all(k.origin == Origin.REVIEWED for k in p.annotation("a.jpg").instances[0].keypoints)
    assert p.reference_paths() == ["a.jpg"]


def test_visibility_zero_clears_point():
    p = project()
    p.set_keypoint("a.jpg", 2, Keypoint(3, 4, Visibility.VISIBLE))
    p.set_visibility("a.jpg", 2, Visibility.OCCLUDED)
    assert p.annotation("a.jpg").instances[0].keypoints[2].v == Visibility.OCCLUDED
    p.set_visibility("a.jpg", 2, Visibility.UNLABELLED)
    assert not p.annotation("a.jpg").instances[0].keypoints[2].labelled


def test_schema_edit_remaps_annotations_and_undoes():
    p = project()
    p.set_keypoint("a.jpg", 2, Keypoint(3, 4, Visibility.VISIBLE))
    new, m = p.schema.delete_keypoint(0)
    p.set_schema(new, m)
    inst = p.annotation("a.jpg").instances[0]
    assert len(inst.keypoints) == 2 and inst.keypoints[1].x == 3
    p.undo()
    assert len(p.schema) == 3 and p.annotation("a.jpg").instances[0].keypoints[2].x == 3


def test_rejects_bad_paths_and_sizes():
    with pytest.raises(PathEscapeError, match="escapes"):
        ImageRecord("../etc/passwd")
    with pytest.raises(PathEscapeError, match="absolute"):
        ImageRecord("/etc/passwd")
    with pytest.raises(PathEscapeError, match="absolute"):
        ImageRecord("C:\\x.jpg")
    assert ImageRecord("a/./b/../c.jpg").path == "a/c.jpg"
    with pytest.raises(ValueError, match="listed twice"):
        Project("/", [ImageRecord("a.jpg"), ImageRecord("./a.jpg")], project().schema)
    with pytest.raises(ValueError, match="keypoints, schema has 3"):
        project().set_annotation("a.jpg", ImageAnnotation((Instance((Keypoint(),)),)), "x")


def test_undo_stack_limit_and_redo_cleared():
    log = []
    st = UndoStack(limit=2)
    for i in range(3):
        st.push(Command(str(i), lambda i=i: log.append(i), lambda i=i: log.append(-i)))
    assert st.undo() == "2" and st.undo() == "1" and st.undo() is None
    st.redo()
    st.push(Command("x", lambda: None, lambda: None))
    assert not st.can_redo


def test_taking_the_history_empties_it_and_returns_every_step():
    st = UndoStack()
    for name in ("a", "b", "c"):
        st.push(Command(name, lambda: None, lambda: None))
    st.undo()
    steps = st.take()
    assert [c.description for c in steps] == ["a", "b", "c"]
    assert not st.can_undo and not st.can_redo and st.undo() is None
    st.push(Command("d", lambda: None, lambda: None))  # still usable
    assert st.undo_text == "d" and len(steps) == 3


def test_accepting_an_image_reviews_its_unfound_keypoints_too():
    p = project()
    kps = (Keypoint(1, 1, 2, Origin.PREDICTED, 0.9), Keypoint(origin=Origin.PREDICTED,
                                                                confidence=0.0), Keypoint())
    p.set_annotation("a.jpg", ImageAnnotation((Instance(kps),), ImageStatus.PREDICTED), "x")
    assert p.annotation("a.jpg").worst_confidence() == 0.0
    p.set_status("a.jpg", ImageStatus.REVIEWED)
    ann = p.annotation("a.jpg")
    assert ann.worst_confidence() is None  # nothing left to review
    assert [k.origin for k in ann.instances[0].keypoints[:2]] == [Origin.REVIEWED] * 2


def test_batches_of_one_run_are_one_undo_step_and_keep_redo():
    p = project()
    p.set_keypoint("a.jpg", 0, Keypoint(1, 1, Visibility.VISIBLE))
    p.undo()  # the user's edit is now on the redo stack
    pred = ImageAnnotation((Instance((Keypoint(5, 5, 2, Origin.PREDICTED, 0.5),) * 3),),
                           ImageStatus.PREDICTED)
    run = object()
    p.set_annotations({"sub/b.jpg": pred}, "Propagate", merge_key=run, keep_redo=True)
    p.set_annotations({"a.jpg": pred}, "Propagate", merge_key=run, keep_redo=True)
    assert p.history.can_redo  # streamed predictions did not wipe the user's redo
    assert p.undo() == "Propagate"  # one step takes back both batches
    assert p.annotation("a.jpg") == ImageAnnotation()
    assert p.annotation("sub/b.jpg") == ImageAnnotation()
    assert p.redo() == "Propagate"
    assert p.annotation("sub/b.jpg") == pred and p.annotation("a.jpg") == pred


def test_a_schema_needs_a_keypoint():
    with pytest.raises(SchemaError, match="at least one"):
        KeypointSchema("empty", ())
    with pytest.raises(SchemaError, match="at least one"):
        KeypointSchema("one", ("a",)).delete_keypoint(0)


def test_listeners_see_the_history_after_the_change():
    """Menus read can_undo/redo_text inside the change notification (issue 9, defect 1)."""
    p = project()
    seen = []
    p.subscribe(lambda _paths: seen.append(
        (p.history.can_undo, p.history.undo_text, p.history.can_redo, p.history.redo_text)))
    p.move_keypoint("a.jpg", 0, 1, 1)
    assert seen[-1] == (True, "Place nose", False, "")
    p.move_keypoint("a.jpg", 0, 2, 2, drag_id=7)
    p.move_keypoint("a.jpg", 0, 3, 3, drag_id=7)  # folds into the drag step
    assert seen[-1] == (True, "Move nose", False, "")
    p.undo()
    assert seen[-1] == (True, "Place nose", True, "Move nose")
    p.undo()
    assert seen[-1] == (False, "", True, "Place nose")
    p.redo()
    assert seen[-1] == (True, "Place nose", True, "Move nose")


def test_a_failing_command_leaves_the_history_as_it_was():
    stack = UndoStack()
    stack.push(Command("ok", lambda: None, lambda: None))

    def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        stack.push(Command("bad", boom, lambda: None))
    assert stack.undo_text == "ok" and not stack.can_redo
    stack.push(Command("bad revert", lambda: None, boom))
    with pytest.raises(RuntimeError):
        stack.undo()
    assert stack.undo_text == "bad revert" and not stack.can_redo


def test_has_references_agrees_with_reference_paths():
    p = project()
    seen = []

    def check() -> None:
        seen.append(p.has_references())
        assert p.has_references() == bool(p.reference_paths())

    check()  # nothing annotated
    pred = Instance((Keypoint(1, 1, 2, Origin.PREDICTED, 0.3),) * 3)
    p.set_annotation("a.jpg", ImageAnnotation((pred,), ImageStatus.PREDICTED), "predict")
    check()  # a prediction is not a reference
    p.set_status("sub/b.jpg", ImageStatus.REFERENCE)
    check()  # marked reference, but without a labelled point
    p.set_keypoint("sub/b.jpg", 0, Keypoint(3, 4, Visibility.VISIBLE))
    check()
    p.undo()
    check()
    p.set_status("a.jpg", ImageStatus.REVIEWED)
    check()  # a reviewed prediction is usable as a reference
    assert seen == [False, False, False, True, False, True]


def test_reference_paths_follow_the_image_order_not_the_order_of_edits():
    schema = KeypointSchema("cat", ("nose",))
    p = Project("/data", [ImageRecord(n) for n in ("c.jpg", "a.jpg", "b.jpg", "d.jpg")], schema)
    for path in ("d.jpg", "a.jpg", "c.jpg"):  # labelled in another order than listed
        p.set_keypoint(path, 0, Keypoint(1, 2, Visibility.VISIBLE))
    p.set_status("a.jpg", ImageStatus.REVIEWED)
    p.set_status("b.jpg", ImageStatus.REFERENCE)  # no labelled point: not a reference
    assert p.reference_paths() == ["c.jpg", "a.jpg", "d.jpg"]


def test_a_project_of_checked_parts_is_the_same_project():
    p = project()
    p.set_keypoint("sub/b.jpg", 0, Keypoint(3, 4, Visibility.VISIBLE))
    p.set_status("a.jpg", ImageStatus.REVIEWED)
    q = Project.of_checked_parts(p.image_root, p.images, p.schema, p.annotations(), p.settings)
    assert (q.image_root, q.images, q.schema, q.annotations(), q.settings) == (
        p.image_root, p.images, p.schema, p.annotations(), p.settings)
    assert q.index_of("sub/b.jpg") == 1 and q.reference_paths() == p.reference_paths()
    q.set_status("sub/b.jpg", ImageStatus.REVIEWED)  # its own copy: p is not touched
    assert p.status("sub/b.jpg") is ImageStatus.REFERENCE
    assert q.undo() and q.status("sub/b.jpg") is ImageStatus.REFERENCE
    with pytest.raises(ValueError, match="twice"):
        Project.of_checked_parts("/d", [ImageRecord("x.jpg")] * 2, p.schema, {}, p.settings)


def test_a_project_of_checked_parts_owns_its_annotations_whatever_mapping_it_was_given():
    from types import MappingProxyType

    p = project()
    p.set_keypoint("a.jpg", 0, Keypoint(3, 4, Visibility.VISIBLE))
    shared = p.annotations()
    for given in (shared, MappingProxyType(shared), _Plain(shared)):
        q = Project.of_checked_parts(p.image_root, p.images, p.schema, given, p.settings)
        q.set_keypoint("sub/b.jpg", 1, Keypoint(5, 6, Visibility.VISIBLE))
        assert "sub/b.jpg" not in shared and "sub/b.jpg" in q.annotations()
        assert q.annotations() == {**shared, "sub/b.jpg": q.annotation("sub/b.jpg")}


class _Plain(Mapping):
    """A mapping that is neither a dict nor a view of one."""

    def __init__(self, data: dict) -> None:
        self._data = data

    def __getitem__(self, key: str):  # noqa: ANN204
        return self._data[key]

    def __iter__(self):  # noqa: ANN204
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)
