"""Colours for confidence, status and keypoints."""

from __future__ import annotations

from PySide6.QtGui import QColor

from annotator.domain import ImageStatus

STATUS_COLORS: dict[ImageStatus, str] = {
    ImageStatus.UNLABELLED: "#8a8a8a",
    ImageStatus.PREDICTED: "#e0a030",
    ImageStatus.REVIEWED: "#3cb371",
    ImageStatus.REFERENCE: "#3c8dde",
}
UNREADABLE_COLOR = "#d03030"


def confidence_color(confidence: float | None, threshold: float = 0.5) -> QColor:
    """Red (low) through yellow (at ``threshold``) to green (high); grey when unknown."""
    if confidence is None:
        return QColor("#b0b0b0")
    c = min(1.0, max(0.0, float(confidence)))
    if c < threshold:
        t = c / threshold if threshold > 0 else 1.0
        return QColor.fromRgbF(0.9, 0.15 + 0.7 * t, 0.1)
    t = (c - threshold) / (1.0 - threshold) if threshold < 1 else 1.0
    return QColor.fromRgbF(0.9 - 0.75 * t, 0.85, 0.1 + 0.2 * t)


def status_color(status: ImageStatus) -> QColor:
    return QColor(STATUS_COLORS[status])
