"""Guard against PySide6 builds that hand out ``None``/``True``/``False`` without a reference.

The PySide6 6.12.0 wheels (``cp310-abi3``) return ``Py_None`` from every C++ ``void`` method and
``Py_True`` from ``SignalInstance.emit()`` without adding the reference the caller owns. CPython
3.12+ makes these singletons immortal, so the missing reference goes unnoticed there; on CPython
3.10 and 3.11 every such call takes one reference away for good. A process starts with a few
thousand references to ``True``: after a few thousand signal emissions (scrolling a large gallery
emits three per thumbnail, a propagation several per image) the count reaches zero and CPython
aborts the process with ``Fatal Python error: bool_dealloc`` (``none_dealloc`` for ``None``),
inside whichever innocent ``emit()`` happens to take the last reference.

:func:`install` detects the leak with a short probe (a ``void`` call and an ``emit()``, 64 times
each) and, where it is found, gives the three singletons a reference count so large that it can
never reach zero: what CPython 3.12 does for them (PEP 683). They are never deallocated in a
healthy process, so nothing else changes. Builds without the leak, and CPython 3.12+, are left
alone. :mod:`annotator.gui` runs it on import, before any widget exists; the environment
variable ``ANNOTATOR_NO_REFGUARD=1`` turns it off (to see whether a PySide6 build still leaks).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

PROBE_CALLS = 64
#: references added to each singleton: 2**40 leaked calls (years of signals) to use them up
BOOST = 1 << 40
_SINGLETONS = (None, True, False)
_state: dict[str, object] = {"installed": False, "leaks": None}
_fallback_refs: list[object] = []  # only if the count cannot be written in place


def probe() -> dict[str, int]:
    """References to ``None`` and ``True`` lost per call by this PySide6 build (0 when sound)."""
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        ping = Signal()

    obj = _Probe()
    base = sys.getrefcount(None)
    for _ in range(PROBE_CALLS):
        obj.setObjectName("")  # a C++ void method
    lost_none = base - sys.getrefcount(None)
    base = sys.getrefcount(True)
    for _ in range(PROBE_CALLS):
        obj.ping.emit()
    lost_true = base - sys.getrefcount(True)
    return {"None": round(max(0, lost_none) / PROBE_CALLS),
            "True": round(max(0, lost_true) / PROBE_CALLS)}


def _refcount_cell(obj: object) -> ctypes.c_ssize_t | None:
    """The ``ob_refcnt`` field of ``obj`` (first in a PyObject), if it can be checked as such."""
    cell = ctypes.c_ssize_t.from_address(id(obj))
    expected = sys.getrefcount(obj) - 1  # getrefcount's own argument
    return cell if abs(cell.value - expected) <= 8 else None


def _boost(obj: object) -> None:
    cell = _refcount_cell(obj)
    if cell is not None:
        cell.value += BOOST  # under the GIL, with no Python code in between
    else:  # unexpected object layout: hold many real references instead (8 MB each)
        _fallback_refs.append([obj] * (1 << 20))


def install(force: bool = False) -> bool:
    """Protect the process if this PySide6 build leaks; returns whether it did (once)."""
    if _state["installed"]:
        return True
    if os.environ.get("ANNOTATOR_NO_REFGUARD") == "1" and not force:
        return False  # to check that the bug is still there (tests)
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return False  # immortal singletons: the leak is harmless
    try:
        leaks = probe()
    except Exception:  # no PySide6, or no usable QtCore: nothing to guard
        log.debug("PySide6 reference probe failed", exc_info=True)
        return False
    _state["leaks"] = leaks
    if not force and not any(leaks.values()):
        return False
    for obj in _SINGLETONS:
        _boost(obj)
    _state["installed"] = True
    import PySide6

    log.info("PySide6 %s loses references to None/True (%s per call) on Python %d.%d: "
             "made them immortal as CPython 3.12 does", PySide6.__version__, leaks,
             *sys.version_info[:2])
    return True


def status() -> dict[str, object]:
    """Whether the guard is active and what the probe found (for tests and diagnostics)."""
    return dict(_state)
