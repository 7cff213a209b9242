"""Which optional parts of Signalbox this environment has installed."""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from types import ModuleType

# What ``pip install 'signalbox[controlplane]'`` adds (top-level import names).
CONTROLPLANE_EXTRA = frozenset({"sqlalchemy", "alembic", "psycopg", "pgserver"})
EXTRA_HINT = "signalbox controlplane ... needs the control plane: pip install 'signalbox[controlplane]'"


def missing_controlplane_extra() -> list[str]:
    """The control-plane extra's packages this environment lacks (empty on a full install)."""
    return sorted(name for name in CONTROLPLANE_EXTRA if find_spec(name) is None)


def controlplane_cli() -> ModuleType | None:
    """``controlplane.cli``, or None on an install without the ``[controlplane]`` extra.

    Only a missing package of that extra means "not installed"; any other
    import error is a real bug and propagates.
    """
    if missing_controlplane_extra():
        return None
    try:
        return import_module("controlplane.cli")
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] in CONTROLPLANE_EXTRA:
            return None
        raise
