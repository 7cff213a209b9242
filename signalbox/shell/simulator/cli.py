"""``signalbox simulator serve`` and ``python -m signalbox.shell.simulator``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

from signalbox import settings
from signalbox.shell.simulator.app import Simulator
from signalbox.shell.simulator.behaviour import Behaviour


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``signalbox simulator serve``."""
    parser = commands.add_parser("simulator", help="the built-in simulated OpenAI-compatible upstream")
    sub = parser.add_subparsers(dest="simulator_command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve the simulated upstream until SIGINT/SIGTERM")
    command = "simulator serve"
    settings.add(
        serve,
        "--listen",
        env="SIGNALBOX_SIMULATOR_LISTEN",
        type=settings.address,
        default="127.0.0.1:7702",
        help="HOST:PORT to listen on (port 0 picks a free one)",
        command=command,
    )
    settings.add(
        serve,
        "--api-key",
        env="SIGNALBOX_SIMULATOR_API_KEY",
        help="require this bearer token on /v1 requests (none: accept any)",
        command=command,
    )
    settings.add(
        serve,
        "--behaviour",
        env="SIGNALBOX_SIMULATOR_BEHAVIOUR",
        help='start-up behaviours as JSON: {"MODEL or *": {"fail_status": 500, ...}}',
        command=command,
    )
    serve.set_defaults(handler=_serve_command)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdecimal()):
        raise ValueError(f"{value!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _serve_command(ns: argparse.Namespace) -> int:
    try:
        host, port = parse_listen(ns.listen)
    except ValueError as exc:
        print(f"--listen: {exc}", file=sys.stderr)
        return 2
    behaviours: dict[str, Behaviour] = {}
    if ns.behaviour:
        try:
            given = json.loads(ns.behaviour)
            if not isinstance(given, dict):
                raise ValueError("expected a JSON object of model: behaviour")
            for model, spec in given.items():
                if not isinstance(spec, dict):
                    raise ValueError(f"{model}: expected a JSON object")
                behaviours[model] = Behaviour.from_json(spec)
        except (ValueError, TypeError) as exc:  # TypeError: a field of the wrong type
            print(f"--behaviour: {str(exc)[:200]}", file=sys.stderr)
            return 2
    simulator = Simulator(host, port, behaviours=behaviours, api_key=ns.api_key)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with simulator:
            # The bound address on stdout, so a parent that asked for port 0 learns it.
            print(f"simulator listening on {simulator.base_url}", flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m signalbox.shell.simulator serve ...``: the simulator alone, without loading either plane."""
    parser = argparse.ArgumentParser(prog="signalbox")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["simulator", *(argv if argv is not None else sys.argv[1:])])
    handler: Any = ns.handler
    return int(handler(ns))
