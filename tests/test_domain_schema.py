import pytest

from annotator.domain import KeypointSchema, SchemaError
from annotator.domain.schema import infer_flip_pairs
from annotator.io.templates import list_templates, load_template


def make() -> KeypointSchema:
    return KeypointSchema(
        "cat", ("nose", "left_eye", "right_eye", "tail"),
        skeleton=((0, 1), (0, 2), (0, 3)), flip_pairs=((1, 2),),
    )


def test_templates_ship_person_and_quadruped():
    names = list_templates()
    assert {"person", "quadruped"} <= set(names)
    person = load_template("person")
    assert len(person) == 17
    assert person.keypoints[0] == "nose"
    # every left_ keypoint has its right_ partner
    perm = person.flip_permutation()
    assert person.keypoints[perm[person.index("left_wrist")]] == "right_wrist"
    quad = load_template("quadruped")
    assert len(quad) >= 12 and quad.flip_pairs


def test_unknown_template_names_the_problem():
    with pytest.raises(SchemaError, match="no template 'nope'"):
        load_template("nope")


def test_validation_rejects_bad_schemas():
    with pytest.raises(SchemaError, match="appears twice"):
        KeypointSchema("x", ("a", "a"))
    with pytest.raises(SchemaError, match="outside"):
        KeypointSchema("x", ("a", "b"), skeleton=((0, 5),))
    with pytest.raises(SchemaError, match="two flip partners"):
        KeypointSchema("x", ("a", "b", "c"), flip_pairs=((0, 1), (0, 2)))
    with pytest.raises(SchemaError, match="colour"):
        KeypointSchema("x", ("a",), colors=("red",))


def test_add_rename_delete_reorder_keep_edges_consistent():
    s = make()
    s2, m = s.add_keypoint("chin", index=1)
    assert s2.keypoints == ("nose", "chin", "left_eye", "right_eye", "tail")
    assert m == (0, 2, 3, 4)
    assert s2.skeleton == ((0, 2), (0, 3), (0, 4)) and s2.flip_pairs == ((2, 3),)
    s3, m = s2.delete_keypoint(2)  # left_eye
    assert m == (0, 1, None, 2, 3)
    assert s3.flip_pairs == () and (0, 2) in s3.skeleton  # nose-right_eye kept
    s4, m = s.reorder([3, 2, 1, 0])
    assert s4.keypoints == ("tail", "right_eye", "left_eye", "nose")
    assert m == (3, 2, 1, 0) and s4.flip_pairs == ((2, 1),)
    s5, m = s.rename_keypoint(3, "tail_tip")
    assert s5.keypoints[3] == "tail_tip" and m == (0, 1, 2, 3)
    with pytest.raises(SchemaError):
        s.reorder([0, 0, 1, 2])


def test_infer_flip_pairs():
    assert infer_flip_pairs(["left_eye", "nose", "right_eye", "left_paw"]) == ((0, 2),)
