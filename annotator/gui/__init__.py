"""gui layer.

Importing it first protects the process from a PySide6 reference-count bug (see
:mod:`annotator.gui.refguard`): every GUI module is imported through this package.
"""

from annotator.gui import refguard as _refguard

_refguard.install()
