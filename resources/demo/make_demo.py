"""Build the demo project: views of scikit-image's public-domain (CC0) "Chelsea the cat".

Run from the repository root: ``python resources/demo/make_demo.py``. Writes images/,
demo.kpproj.json (cat_face schema, one labelled reference) and ground_truth.json (where each
reference keypoint lands in every view, computed from the exact crop/scale/mirror applied).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from annotator.domain import ImageRecord, Keypoint, Project, Visibility
from annotator.io.project_file import save_project
from annotator.io.templates import load_template

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
REFERENCE = "chelsea.jpg"
# cat_face keypoints on the original 451 x 300 photo (subject's left is the viewer's right).
REFERENCE_POINTS = {
    "left_eye": (320.0, 135.0),
    "right_eye": (170.0, 115.0),
    "nose": (262.0, 240.0),
    "left_ear": (380.0, 15.0),
    "right_ear": (60.0, 10.0),
    "mouth": (258.0, 268.0),
}

Points = np.ndarray  # (K, 2) continuous pixel coordinates
View = tuple[Image.Image, Points]


def crop(box: tuple[int, int, int, int]) -> Callable[[View], View]:
    def f(view: View) -> View:
        img, pts = view
        return img.crop(box), pts - np.array(box[:2], float)

    return f


def scale(factor: float) -> Callable[[View], View]:
    def f(view: View) -> View:
        img, pts = view
        w, h = round(img.width * factor), round(img.height * factor)
        return img.resize((w, h), Image.Resampling.LANCZOS), pts * [w / img.width, h / img.height]

    return f


def mirror(view: View) -> View:
    img, pts = view
    out = pts.copy()
    out[:, 0] = img.width - out[:, 0]
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), out


def gamma(g: float) -> Callable[[View], View]:
    def f(view: View) -> View:
        img, pts = view
        arr = (255.0 * (np.asarray(img) / 255.0) ** g).round().astype(np.uint8)
        return Image.fromarray(arr), pts

    return f


VIEWS: dict[str, list[Callable[[View], View]]] = {
    REFERENCE: [],
    "chelsea_mirror.jpg": [mirror],
    "chelsea_crop.jpg": [crop((40, 0, 420, 300))],
    "chelsea_small.jpg": [scale(0.6)],
    "chelsea_zoom_mirror.jpg": [crop((100, 60, 360, 300)), scale(1.5), mirror],
    "chelsea_dim_crop.jpg": [crop((0, 0, 390, 285)), gamma(1.5)],
}


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    schema = load_template("cat_face")
    ref_pts = np.array([REFERENCE_POINTS[n] for n in schema.keypoints], float)
    IMAGES.mkdir(parents=True, exist_ok=True)
    truth = {}
    records = []
    for name, steps in VIEWS.items():
        view: View = (Image.fromarray(data.chelsea()), ref_pts)
        for step in steps:
            view = step(view)
        img, pts = view
        img.save(IMAGES / name, quality=92)
        truth[name] = [[round(x, 2), round(y, 2)] for x, y in pts]
        records.append(ImageRecord(name, img.width, img.height))
        logging.info("wrote %s (%d x %d)", name, img.width, img.height)
    # keypoints of a flipped view swap left/right partners: store them under the schema's names
    for name, steps in VIEWS.items():
        if steps.count(mirror) % 2:
            perm = schema.flip_permutation()
            truth[name] = [truth[name][perm[i]] for i in range(len(schema))]
    project = Project("images", records, schema)
    for k, (x, y) in enumerate(ref_pts):  # labelling an image makes it a reference
        project.set_keypoint(REFERENCE, k, Keypoint(float(x), float(y), Visibility.VISIBLE))
    save_project(project, HERE / "demo.kpproj.json")
    (HERE / "demo.kpproj.json").chmod(0o644)
    (HERE / "ground_truth.json").write_text(json.dumps(
        {"keypoints": list(schema.keypoints), "images": truth}, indent=1
    ))


if __name__ == "__main__":
    main()
