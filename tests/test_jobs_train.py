"""Training job: the head learns from reviewed images of the real fixture (DINOv2-S on the
DeepLabCut openfield frames), is saved and found again, and is never used with too few
reviewed images."""

from __future__ import annotations

import time

import numpy as np
import pytest

from annotator.domain import ImageStatus, Keypoint, KeypointSchema, Visibility
from annotator.domain.annotation import ImageAnnotation, Instance
from annotator.domain.project import Project, ProjectSettings
from annotator.engine import Engine
from annotator.features.cache import FeatureCache
from annotator.features.config import preset
from annotator.features.content import ContentExtractor
from annotator.io.formats.dlc import read_dlc
from annotator.io.images import load_image
from annotator.io.project_file import new_project
from annotator.jobs import train as tj
from annotator.jobs.progress import Cancelled, TaskState
from annotator.jobs.propagate import ReferenceSpec, reference_crop
from annotator.matching.head import HeadParams
from tests.shared_fixtures import shared_fixture

OPENFIELD = shared_fixture("dlc-examples", "openfield-Pranav-2018-10-30", "config.yaml")
DINO = shared_fixture("dinov2-small", "model.safetensors").parent


def openfield_labels() -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """Keypoint names and labels (K, 2) by image name, through the DLC reader."""
    dlc = read_dlc(OPENFIELD)
    labels = {}
    for rec in dlc.images:
        kps = dlc.annotation(rec.path).instances[0].keypoints
        labels[rec.path.split("/")[-1]] = np.array(
            [[kp.x, kp.y] if kp.labelled else [np.nan, np.nan] for kp in kps])
    return tuple(dlc.schema.keypoints), labels


def reviewed(points: np.ndarray) -> ImageAnnotation:
    kps = tuple(Keypoint(float(x), float(y), Visibility.VISIBLE) if np.isfinite(x) else Keypoint()
                for x, y in points)
    return ImageAnnotation((Instance(kps),), ImageStatus.REVIEWED)


def real_engine(cache_dir) -> Engine:
    return Engine.from_pretrained(dino_model=str(DINO), preset="fast", fusion="dino",
                                  device="cpu", local_files_only=True,
                                  feature_cache=FeatureCache(cache_dir))


def test_head_learns_openfield_from_four_reviewed_frames(tmp_path):
    names, labels = openfield_labels()
    frames = sorted(labels)
    train = [frames[i] for i in (5, 35, 65, 95)]
    test = [frames[i] for i in (12, 50, 88, 110)]
    schema = KeypointSchema("mouse", names)
    frames_dir = OPENFIELD.parent / "labeled-data" / "m4s1"
    project = Project(str(frames_dir), [], schema,
                      settings=ProjectSettings(cache_dir=str(tmp_path / "features")))
    from annotator.domain.project import ImageRecord

    project.add_images([ImageRecord(f) for f in frames])
    project.set_annotations({f: reviewed(labels[f]) for f in train}, "review")
    engine = real_engine(tmp_path / "features")
    request = tj.TrainRequest.from_project(project)
    assert request.images == tuple(train)
    t0 = time.perf_counter()
    result = tj.run_training(request, engine, TaskState())
    assert result.instances == 4 and result.images == tuple(train)
    assert result.train_seconds < 20  # ~1 s alone on 2 cores; generous for a busy machine
    assert time.perf_counter() - t0 < 120
    path = tj.save_project_head(project, engine, result)
    assert path.parent == tmp_path / "features-heads"
    head = tj.project_head(project, engine)
    assert head is not None and head.meta["num_images"] == 4

    hits = near = total = 0
    for name in test:  # crops around the labelled keypoints (+15 %), as a reviewed box would
        image = load_image(frames_dir / name)
        gt = labels[name]
        spec = ReferenceSpec(name, tuple(map(tuple, gt)), (True,) * len(names))
        crop, _, _ = reference_crop(image, spec, 0.15)
        pts, conf = tj.predict_with_head(head, engine, crop)
        pred = crop.rect.to_image(pts)
        scale = np.max(gt.max(0) - gt.min(0))
        err = np.linalg.norm(pred - gt, axis=1)
        hits += int((err <= 0.1 * scale).sum())
        near += int((err <= 0.2 * scale).sum())
        total += len(gt)
        assert ((conf >= 0) & (conf <= 1)).all()
    # chance (a point anywhere in the ~80 px crop) is a few %; measured here 13/16 within 0.1
    # of the box and 16/16 within 0.2 (the bench: ~50 % at PCK@0.1 with 5 frames over 30)
    assert hits / total >= 0.5 and near / total >= 0.75


@pytest.fixture
def small_project(tmp_path):
    from PIL import Image
    from skimage import data

    img = data.chelsea()
    for i in range(4):
        Image.fromarray(np.roll(img, 8 * i, axis=1)).save(tmp_path / f"img{i}.png")
    schema = KeypointSchema("cat", ("left_eye", "right_eye", "nose"), flip_pairs=((0, 1),))
    project = new_project(tmp_path, schema)
    pts = np.array([[140.0, 110.0], [220.0, 110.0], [180.0, 160.0]])
    for i in range(3):
        project.set_annotations({f"img{i}.png": reviewed(pts + [8 * i, 0])}, "review")
    project.set_settings(ProjectSettings(cache_dir=str(tmp_path / "cache")))
    return project


def content_engine(tmp_path, fusion: str = "dino") -> Engine:
    return Engine(config=preset("fast", fusion=fusion), extractor=ContentExtractor(),
                  cache=FeatureCache(tmp_path / "cache"))


def test_too_few_reviewed_images_never_use_the_head(small_project, tmp_path):
    engine = content_engine(tmp_path)
    request = tj.TrainRequest.from_project(small_project, HeadParams(steps=5))
    result = tj.run_training(request, engine, TaskState())
    tj.save_project_head(small_project, engine, result)
    assert tj.load_project_head(small_project, engine) is not None  # saved and found
    assert tj.reviewed_image_count(small_project) == 3 == tj.MIN_TRAINING_IMAGES
    assert tj.project_head(small_project, engine) is not None
    # a higher minimum is not met by 3 reviewed images
    assert tj.project_head(small_project, engine, min_images=4) is None
    # a head trained on enough images is still not used once a review is undone
    small_project.set_status("img2.png", ImageStatus.PREDICTED)
    assert tj.reviewed_image_count(small_project) == 2
    assert tj.project_head(small_project, engine) is None


def test_a_head_trained_on_too_few_images_is_never_used(small_project, tmp_path):
    engine = content_engine(tmp_path)
    small_project.set_status("img2.png", ImageStatus.PREDICTED)
    result = tj.run_training(tj.TrainRequest.from_project(small_project, HeadParams(steps=5)),
                             engine, TaskState())
    assert result.images == ("img0.png", "img1.png")
    tj.save_project_head(small_project, engine, result)
    small_project.set_status("img2.png", ImageStatus.REVIEWED)  # 3 reviewed now, head has 2
    assert tj.load_project_head(small_project, engine) is not None
    assert not tj.head_usable(tj.load_project_head(small_project, engine))
    assert tj.project_head(small_project, engine) is None


def test_head_of_other_features_or_schema_is_not_used(small_project, tmp_path):
    engine = content_engine(tmp_path)
    result = tj.run_training(tj.TrainRequest.from_project(small_project, HeadParams(steps=5)),
                             engine, TaskState())
    tj.save_project_head(small_project, engine, result)
    small_project.set_settings(ProjectSettings(cache_dir=str(tmp_path / "cache"),
                                               crop_margin=0.3))
    assert tj.load_project_head(small_project, engine) is None  # other crops: other file


def test_mirrored_views_with_flip_pairs(small_project, tmp_path):
    engine = content_engine(tmp_path)
    request = tj.TrainRequest.from_project(small_project, HeadParams(steps=5, flip=True))
    data = tj.training_set(request, engine, TaskState())
    assert len(data.descriptors) == 6  # 3 crops and their mirrors
    # the mirror's left eye is the right eye mirrored: x -> G - 1 - x in cells
    g = data.descriptors.shape[-1]
    np.testing.assert_allclose(data.cells[1, 0, 0], g - 1 - data.cells[0, 1, 0], atol=0.6)
    plain = tj.training_set(tj.TrainRequest.from_project(small_project), engine, TaskState())
    assert len(plain.descriptors) == 3


def test_whole_images_without_crops_and_box_predictions(small_project, tmp_path):
    import dataclasses

    engine = content_engine(tmp_path)
    small_project.set_settings(dataclasses.replace(small_project.settings, crop="none"))
    request = tj.TrainRequest.from_project(small_project, HeadParams(steps=30))
    data = tj.training_set(request, engine, TaskState())
    maps = engine.features(load_image(tmp_path / "img0.png"))  # the whole image, cached
    g = data.descriptors.shape[-1]
    from annotator.matching.head import pixels_to_cells

    want = pixels_to_cells(np.array([[140.0, 110.0]]), maps.letterbox, g)[0]
    np.testing.assert_allclose(data.cells[0, 0].numpy(), want, atol=1e-5)
    assert engine.cache_stats().hits >= 1
    result = tj.run_training(request, engine, TaskState())
    image = load_image(tmp_path / "img3.png")
    pts, conf, found = tj.predict_in_box(result.head, engine, image, (150, 90, 60, 60), 0.0)
    assert pts.shape == (3, 2) and conf.shape == (3,) and found.dtype == bool
    inside = (pts[found] >= [150 - 0.5, 90 - 0.5]) & (pts[found] < [210, 150])
    assert inside.all() and np.isnan(pts[~found]).all()
    whole, _, whole_found = tj.predict_in_box(result.head, engine, image, None, 0.0)
    assert whole_found.all() and (whole >= -0.5).all()


def test_cancel_between_images(small_project, tmp_path):
    engine = content_engine(tmp_path)
    loaded = []

    def loader(path):
        loaded.append(path.name)
        return load_image(path)

    state = TaskState(on_progress=lambda p: state.cancel() if p.done >= 1 else None)
    with pytest.raises(Cancelled):
        tj.run_training(tj.TrainRequest.from_project(small_project), engine, state, loader)
    assert loaded == ["img0.png", "img1.png"]  # cancelled before the third image


def test_cancel_and_refusals(small_project, tmp_path):
    engine = content_engine(tmp_path)
    state = TaskState()
    state.cancel()
    with pytest.raises(Cancelled):
        tj.run_training(tj.TrainRequest.from_project(small_project), engine, state)
    copca = Engine.from_pretrained(dino_model=str(DINO), preset="fast", fusion="copca",
                                   device="cpu", local_files_only=True)
    with pytest.raises(tj.TrainingError, match="'copca' fusion"):
        tj.run_training(tj.TrainRequest.from_project(small_project), copca, TaskState())
    assert not copca.loaded  # refused before loading any model
    empty = new_project(small_project.image_root, small_project.schema)
    with pytest.raises(tj.TrainingError, match="no reviewed"):
        tj.run_training(tj.TrainRequest.from_project(empty), engine, TaskState())
