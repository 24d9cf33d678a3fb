"""Zero-shot box detection with a text-prompted open-vocabulary detector (OWLv2, transformers).

Weights load like the engine's (annotator.features.models): a hub id through
``snapshot_download`` restricted to the files used (``DETECTOR_ALLOW_PATTERNS``; HF cache,
``cache_dir`` and offline mode honoured) or a local folder; safetensors only; every failure is
a ``ModelLoadError`` saying what, where and how to fix it.

Geometry is done here, not by the image processor: the image (RGB uint8) is padded at the
bottom and right to a square with grey 0.5 (as Owlv2ImageProcessor does), resized to the
vision tower's ``image_size`` and normalised with the CLIP mean and std (the folder's
preprocessor_config.json values when present). Boxes come back as (cx, cy, w, h) fractions of
the padded square, so multiplying by the square's side gives original pixels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotator.features.config import ModelSource
from annotator.features.models import (
    DownloadProgress,
    ModelLoadError,
    _local_folder,
    _snapshot,
    _transformers_model_type,
)

log = logging.getLogger(__name__)

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
DETECTOR_ALLOW_PATTERNS = [
    "config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
    "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DETECTOR_TYPES = ("owlv2", "owlvit")


@dataclass(frozen=True)
class DetectParams:
    """Score threshold in [0, 1], at most ``max_boxes`` per image, and the prompt template
    (``{}`` is replaced by the text prompt, e.g. the schema's category name)."""

    threshold: float = 0.2
    max_boxes: int = 10
    template: str = "a photo of a {}"
    nms_iou: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"detection threshold {self.threshold} outside [0, 1]")
        if self.max_boxes < 1:
            raise ValueError(f"max boxes {self.max_boxes} must be >= 1")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"NMS IoU {self.nms_iou} outside (0, 1]")


@dataclass(frozen=True)
class Detections:
    """``boxes`` (N, 4) float64 (x, y, w, h) original pixels, ``scores`` (N,) in [0, 1],
    best first."""

    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0))


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first. boxes (N, 4) xyxy."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in order:
        if keep:
            k = np.asarray(keep)
            x1 = np.maximum(boxes[i, 0], boxes[k, 0])
            y1 = np.maximum(boxes[i, 1], boxes[k, 1])
            x2 = np.minimum(boxes[i, 2], boxes[k, 2])
            y2 = np.minimum(boxes[i, 3], boxes[k, 3])
            inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
            union = area[i] + area[k] - inter
            if np.any(inter / np.maximum(union, 1e-9) > iou):
                continue
        keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)


class BoxDetector:
    """A loaded open-vocabulary detector; :meth:`detect` runs one image."""

    def __init__(self, model: Any, tokenizer: Any, device: str, dtype: Any,
                 mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD,
                 source: str = "") -> None:
        self.model, self.tokenizer = model, tokenizer
        self.device, self.dtype = device, dtype
        self.mean, self.std = tuple(mean), tuple(std)
        self.size = int(model.config.vision_config.image_size)
        self.source = source
        self._text: dict[str, Any] = {}

    def _pixels(self, image: np.ndarray) -> tuple[Any, int]:
        import cv2
        import torch

        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
        h, w = img.shape[:2]
        side = max(h, w)
        square = np.full((side, side, 3), 0.5, dtype=np.float32)
        square[:h, :w] = img.astype(np.float32) / 255.0
        interp = cv2.INTER_AREA if side > self.size else cv2.INTER_LINEAR
        resized = cv2.resize(square, (self.size, self.size), interpolation=interp)
        x = (resized - np.float32(self.mean)) / np.float32(self.std)
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
        return t.to(self.device, self.dtype), side

    def _text_inputs(self, text: str) -> Any:
        if text not in self._text:
            max_len = int(self.model.config.text_config.max_position_embeddings)
            self._text[text] = self.tokenizer([text], padding="max_length", truncation=True,
                                              max_length=max_len, return_tensors="pt")
        return self._text[text]

    def detect(self, image: np.ndarray, prompt: str, params: DetectParams | None = None
               ) -> Detections:
        """Boxes of ``prompt`` (e.g. "cat") in ``image`` (H, W, 3) uint8, best first."""
        import torch

        params = params or DetectParams()
        if not prompt.strip():
            raise ValueError("the detection prompt is empty")
        pixels, side = self._pixels(image)
        text = self._text_inputs(params.template.format(prompt.strip()))
        with torch.inference_mode():
            out = self.model(input_ids=text["input_ids"].to(self.device),
                             attention_mask=text["attention_mask"].to(self.device),
                             pixel_values=pixels)
        scores = torch.sigmoid(out.logits[0].float()).amax(-1).cpu().numpy().astype(np.float64)
        cxcywh = out.pred_boxes[0].float().cpu().numpy().astype(np.float64) * side
        h, w = np.asarray(image).shape[:2]
        xyxy = np.stack([cxcywh[:, 0] - cxcywh[:, 2] / 2, cxcywh[:, 1] - cxcywh[:, 3] / 2,
                         cxcywh[:, 0] + cxcywh[:, 2] / 2, cxcywh[:, 1] + cxcywh[:, 3] / 2], 1)
        xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, w)
        xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, h)
        ok = ((scores >= params.threshold) & (xyxy[:, 2] - xyxy[:, 0] >= 1)
              & (xyxy[:, 3] - xyxy[:, 1] >= 1) & np.isfinite(scores))
        xyxy, scores = xyxy[ok], scores[ok]
        if len(scores) == 0:
            return Detections.empty()
        keep = _nms(xyxy, scores, params.nms_iou)[: params.max_boxes]
        b = xyxy[keep]
        boxes = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
        return Detections(boxes, np.clip(scores[keep], 0.0, 1.0))


def load_detector(model: str = DEFAULT_DETECTOR, device: str = "cpu", dtype: Any = None,
                  source: ModelSource | None = None, revision: str | None = None,
                  progress: DownloadProgress | None = None) -> BoxDetector:
    """Load an OWLv2 (or OWL-ViT) detector from a hub id or a local folder.

    ``source`` gives the HF cache folder and offline mode (default: from the environment).
    Raises ModelLoadError on any failure."""
    import torch
    from transformers import AutoTokenizer

    source = source or ModelSource.from_env()
    dtype = dtype or torch.float32
    name = model
    folder = _local_folder(name, "detector", f"(default {DEFAULT_DETECTOR}) as the detector "
                           "model setting") or _snapshot(
        name, revision, source, DETECTOR_ALLOW_PATTERNS, "the detector model setting",
        "box detector", progress)
    model_type = _transformers_model_type(
        folder, name, tuple(DETECTOR_TYPES), "an open-vocabulary detector folder",
        f"point the detector model setting at {DEFAULT_DETECTOR} or a folder saved from it.")
    if model_type == "owlv2":
        from transformers import Owlv2ForObjectDetection as cls
    else:
        from transformers import OwlViTForObjectDetection as cls
    try:
        net = cls.from_pretrained(str(folder), torch_dtype=dtype, use_safetensors=True,
                                  local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the detector from {folder}: {exc}. Fix: the "
                             f"folder needs config.json, model.safetensors and the tokenizer "
                             f"files.") from exc
    net.to(device=device).eval().requires_grad_(False)
    mean, std = CLIP_MEAN, CLIP_STD
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            raw = json.loads(pre.read_text())
            mean = tuple(raw.get("image_mean", mean))
            std = tuple(raw.get("image_std", std))
        except (OSError, ValueError):
            pass
    log.info("loaded detector %s from %s on %s", model_type, folder, device)
    return BoxDetector(net, tokenizer, device, dtype, mean, std, source=str(folder))
