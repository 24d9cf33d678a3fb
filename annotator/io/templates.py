"""Keypoint schema templates shipped in resources/templates."""

from __future__ import annotations

import json
from pathlib import Path

from annotator.domain.schema import KeypointSchema, SchemaError

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "resources" / "templates"


def list_templates(folder: Path = TEMPLATE_DIR) -> list[str]:
    """Names of the available templates."""
    return sorted(p.stem for p in folder.glob("*.json"))


def load_template(name: str, folder: Path = TEMPLATE_DIR) -> KeypointSchema:
    """Load template ``name``; raises :class:`SchemaError` naming the file on bad content."""
    path = folder / f"{name}.json"
    if not path.is_file():
        raise SchemaError(f"no template {name!r} in {folder} (have: {list_templates(folder)})")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return KeypointSchema(
            name=doc["name"],
            keypoints=tuple(doc["keypoints"]),
            skeleton=tuple(tuple(e) for e in doc.get("skeleton", [])),
            flip_pairs=tuple(tuple(p) for p in doc.get("flip_pairs", [])),
            colors=tuple(doc.get("colors", ())),
            supercategory=doc.get("supercategory", ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"template {path}: {exc}") from None
