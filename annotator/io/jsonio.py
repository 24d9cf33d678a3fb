"""Strict JSON reading for every importer: one error type, bounded numbers and depth.

:func:`loads_strict` accepts a UTF-8 BOM, refuses NaN/Infinity, integers of more than
:data:`MAX_INT_DIGITS` digits, floats that overflow to infinity and nesting deeper than the
interpreter's recursion guard, and raises :class:`InputFormatError` (a ``ValueError``) for
all of them, never ``OverflowError`` or ``RecursionError``.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_INT_DIGITS = 30
MAX_COORDINATE = 1e7  # pixel coordinates and sizes beyond this are not an image's


class InputFormatError(ValueError):
    """A file given as input is malformed; the message names the file and the problem."""


class _Refused(ValueError):
    pass


def _parse_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(digits)} digits (more than {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} is out of range")
    return value


def _parse_constant(text: str) -> Any:
    raise _Refused(f"{text} is not a JSON number")


def loads_strict(data: bytes | str, source: str, error: type[ValueError] = InputFormatError
                 ) -> Any:
    """Decode JSON ``data`` (UTF-8, BOM accepted) read from ``source``; raises ``error``."""
    if isinstance(data, bytes):
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{source}: not UTF-8 text (byte {exc.start})") from None
    else:
        text = data.removeprefix("\ufeff")
    try:
        return json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                          parse_constant=_parse_constant)
    except _Refused as exc:
        raise error(f"{source}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{source}: invalid or truncated JSON at line {exc.lineno} column "
                    f"{exc.colno} ({exc.msg})") from None
    except RecursionError:  # the C scanner's depth guard (about 1,000 levels)
        raise error(f"{source}: nested too deeply to be a valid file") from None
    except (ValueError, OverflowError) as exc:
        raise error(f"{source}: not valid JSON ({type(exc).__name__}: {exc})") from None


def check_coordinate(value: Any, where: str, error: type[ValueError] = InputFormatError,
                     low: float = -MAX_COORDINATE, high: float = MAX_COORDINATE) -> float:
    """A finite int or float (not bool, not a string) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{where}: {value!r} is not a number")
    try:
        f = float(value)
    except OverflowError:
        raise error(f"{where}: {value!r} is out of range") from None
    if not math.isfinite(f) or not low <= f <= high:
        raise error(f"{where}: {value!r} is out of range [{low:g}, {high:g}]")
    return f
