"""The ``signalbox`` command.

Each plane registers its own subcommands; this module only assembles them with
the shell's own tools. The control plane is loaded only when its optional
dependencies (the ``[controlplane]`` extra) are installed, so a data-plane-only
install has every other command.

A command line that names its command loads only that command's module: importing
every plane (gRPC, aiohttp, the data plane's serving code, the control plane's ORM)
took ~1.3 s before any command ran, a pause on every ``signalbox admin ...``. Help
at the top, no command or an unknown one load them all, so the listing is complete.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TypeAlias

from signalbox.shell.extras import EXTRA_HINT, controlplane_cli

Handler = Callable[[argparse.Namespace], int]
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _dataplane(commands: Commands) -> None:
    from dataplane import cli as dataplane_cli
    from signalbox.shell.progress import records_bar

    dataplane_cli.register(commands, progress=records_bar)


def _controlplane(commands: Commands) -> None:
    controlplane = controlplane_cli()
    if controlplane is not None:
        controlplane.register(commands)


def _admin(commands: Commands) -> None:
    from signalbox.shell import admin_cli

    admin_cli.register(commands)


def _infer(commands: Commands) -> None:
    from signalbox.shell import client_cli

    client_cli.register(commands)


def _evidence(commands: Commands) -> None:
    from signalbox.shell import evidence_cli

    evidence_cli.register(commands)


def _up(commands: Commands) -> None:
    from signalbox.shell import up

    up.register(commands)  # ``up`` and ``simulator``


# In the order ``signalbox --help`` lists them.
REGISTRARS: tuple[tuple[tuple[str, ...], Callable[[Commands], None]], ...] = (
    (("dataplane",), _dataplane),
    (("controlplane",), _controlplane),
    (("admin",), _admin),
    (("infer",), _infer),
    (("evidence",), _evidence),
    (("simulator", "up"), _up),
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: with only the command it names when it names one (and that
    command is installed), else with every command."""
    named = _command(argv or ())
    parser, commands = _empty()
    for names, register in REGISTRARS:
        if named in names:
            register(commands)
    if named in commands.choices:
        return parser
    parser, commands = _empty()
    for _, register in REGISTRARS:
        register(commands)
    if "controlplane" not in commands.choices:
        parser.epilog = EXTRA_HINT
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, None when help for ``signalbox`` itself comes first."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
        if arg in ("-h", "--help"):
            return None
    return None


def _empty() -> tuple[argparse.ArgumentParser, Commands]:
    parser = argparse.ArgumentParser(prog="signalbox", description="Signalbox AI orchestrator")
    return parser, parser.add_subparsers(dest="command", required=True, metavar="COMMAND")


INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C before it had handlers of its own (128 + SIGINT)."""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        given = list(sys.argv[1:] if argv is None else argv)
        parser = build_parser(given)
        ns = parser.parse_args(given)
        # The command line as given: a command that runs copies of itself (dataplane serve
        # --workers) repeats it exactly.
        ns.argv = given
        handler: Handler = ns.handler
        return handler(ns)
    except KeyboardInterrupt:
        # Ctrl-C while a command imports or starts, before it has signal handlers of its own
        # (a node's first second): a stop the operator asked for, not a crash to print.
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
