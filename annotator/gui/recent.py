"""Recently opened projects, kept in QSettings."""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings

KEY = "recent_projects"
LIMIT = 10
SETTINGS_FILE: str | None = None  # tests point this at an ini file in a temporary folder


def _settings() -> QSettings:
    if SETTINGS_FILE:
        return QSettings(SETTINGS_FILE, QSettings.Format.IniFormat)
    return QSettings("keypoint-annotator", "annotator")


def recent_projects() -> list[str]:
    """Existing project files, most recent first."""
    value = _settings().value(KEY, [])
    paths = [value] if isinstance(value, str) else list(value or [])
    return [p for p in paths if isinstance(p, str) and os.path.isfile(p)]


def add_recent_project(path: str) -> None:
    path = os.path.abspath(path)
    paths = [p for p in recent_projects() if p != path]
    _settings().setValue(KEY, [path, *paths][:LIMIT])
