"""The edit journal's format, read side: where it lives, its checksummed lines, and
:func:`recover_document`, which :func:`annotator.io.project_file.load_project` uses to replay
the edits a project file does not hold yet (written by :mod:`annotator.io.autosave`). Kept apart
from the autosaver so that project_file and autosave do not import each other."""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".journal"
JOURNAL_FORMAT = "keypoint-annotator-journal"
_STAMP = re.compile(rb'"journal":\s*\{\s*"id":\s*"([0-9a-f]{32})",\s*"seq":\s*(\d{1,18})\s*\}')


def journal_path(project_path: str | os.PathLike[str]) -> Path:
    """Where the edit journal of ``project_path`` lives (beside the real file)."""
    return Path(os.path.realpath(project_path) + JOURNAL_SUFFIX)


def _line(obj: Mapping[str, Any]) -> bytes:
    body = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return f"{zlib.crc32(body.encode('ascii')):08x} {body}\n".encode("ascii")


def read_journal(path: str | os.PathLike[str]) -> tuple[dict | None, list[dict], int]:
    """(header, records, bytes of good lines) of a journal; reading stops at the first torn
    or damaged line."""
    data = Path(path).read_bytes()
    header: dict | None = None
    records: list[dict] = []
    good = 0
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            break
        raw = data[pos:end]
        try:
            crc, body = raw.split(b" ", 1)
            if int(crc, 16) != zlib.crc32(body):
                break
            obj = json.loads(body)
        except (ValueError, RecursionError):
            break
        if not isinstance(obj, dict):
            break
        if header is None:
            if obj.get("format") != JOURNAL_FORMAT or not isinstance(obj.get("id"), str):
                break
            header = obj
        else:
            if not isinstance(obj.get("seq"), int):
                break
            records.append(obj)
        pos = good = end + 1
    return header, records, good


def read_stamp(project_path: str | os.PathLike[str]) -> tuple[str, int] | None:
    """(journal id, seq) recorded near the top of a project file, or None."""
    try:
        with open(project_path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    m = _STAMP.search(head)
    return (m.group(1).decode(), int(m.group(2))) if m else None


def _apply_record(doc: dict, rec: Mapping[str, Any]) -> None:
    if "a" in rec:
        annotations = doc.setdefault("annotations", {})
        for path, ann in rec["a"].items():
            if ann is None:
                annotations.pop(path, None)
            else:
                annotations[path] = ann
    if "schema" in rec:
        doc["schema"] = rec["schema"]
        doc["settings"] = rec["settings"]
        doc["annotations"] = dict(rec["annotations"])


def recover_document(doc: Any, project_path: str | os.PathLike[str]) -> tuple[Any, int]:
    """``doc`` with the journal records it does not hold yet applied, and their count."""
    jp = journal_path(project_path)
    stamp = doc.get("journal") if isinstance(doc, dict) else None
    if not jp.exists() or not isinstance(stamp, dict):
        return doc, 0
    try:
        header, records, _ = read_journal(jp)
    except OSError as exc:
        log.warning("edit journal %s cannot be read (%s)", jp, exc)
        return doc, 0
    if header is None or header.get("id") != stamp.get("id"):
        return doc, 0
    seq0 = stamp.get("seq") if isinstance(stamp.get("seq"), int) else 0
    new = dict(doc)
    new["annotations"] = dict(doc.get("annotations") or {})
    count = 0
    for rec in records:
        if rec["seq"] > seq0:
            try:
                _apply_record(new, rec)
            except (AttributeError, KeyError, TypeError) as exc:
                log.warning("edit journal %s: record %s not applied (%s)", jp, rec["seq"], exc)
                break
            count += 1
    if count:
        log.info("recovered %d journaled edit(s) of %s", count, project_path)
    return new, count
