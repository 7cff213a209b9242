"""The ``signalbox`` command.

Each plane registers its own subcommands; this module only assembles them with
the shell's own tools. The control plane is loaded only when its optional
dependencies (the ``[controlplane]`` extra) are installed, so a data-plane-only
install has every other command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from importlib.util import find_spec
from types import ModuleType

Handler = Callable[[argparse.Namespace], int]

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


def build_parser() -> argparse.ArgumentParser:
    from dataplane import cli as dataplane_cli
    from signalbox.shell import admin_cli, client_cli, up

    controlplane = controlplane_cli()
    parser = argparse.ArgumentParser(
        prog="signalbox",
        description="Signalbox AI orchestrator",
        epilog=None if controlplane is not None else EXTRA_HINT,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dataplane_cli.register(commands)
    if controlplane is not None:
        controlplane.register(commands)
    admin_cli.register(commands)
    client_cli.register(commands)
    up.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    handler: Handler = ns.handler
    return handler(ns)


if __name__ == "__main__":
    sys.exit(main())
