"""The ``signalbox`` command.

Each plane registers its own subcommands; this module only assembles them, and
imports the control plane lazily so a data-plane-only node never loads it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signalbox", description="Signalbox AI orchestrator")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from dataplane import cli as dataplane_cli

    dataplane_cli.register(commands)
    try:
        from controlplane import cli as controlplane_cli
    except ImportError:  # a data-plane-only install
        pass
    else:
        controlplane_cli.register(commands)
    from signalbox import client_cli, up

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
