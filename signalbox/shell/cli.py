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

from signalbox.shell.extras import EXTRA_HINT, controlplane_cli

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from dataplane import cli as dataplane_cli
    from signalbox.shell import admin_cli, client_cli, evidence_cli, up
    from signalbox.shell.progress import records_bar

    controlplane = controlplane_cli()
    parser = argparse.ArgumentParser(
        prog="signalbox",
        description="Signalbox AI orchestrator",
        epilog=None if controlplane is not None else EXTRA_HINT,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dataplane_cli.register(commands, progress=records_bar)
    if controlplane is not None:
        controlplane.register(commands)
    admin_cli.register(commands)
    client_cli.register(commands)
    evidence_cli.register(commands)
    up.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    # The command line as given: a command that runs copies of itself (dataplane serve
    # --workers) repeats it exactly.
    ns.argv = list(sys.argv[1:] if argv is None else argv)
    handler: Handler = ns.handler
    return handler(ns)


if __name__ == "__main__":
    sys.exit(main())
