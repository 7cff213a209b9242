"""The evidence code written in Cython (``_rows.pyx``), when the package was built with it.

None when it was not (``SIGNALBOX_COMPILE=0``, a site without a C compiler): its callers then
run their pure-Python twins, which do the same (README.md, "Compiled modules").
"""

from __future__ import annotations

import importlib
from types import ModuleType

rows: ModuleType | None
try:
    rows = importlib.import_module("controlplane.evidence._rows")
except ImportError:
    rows = None
