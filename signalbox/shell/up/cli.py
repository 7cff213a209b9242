"""``signalbox up`` (and ``signalbox simulator``) on the command line: the options, and
the run that starts the stack, shows the demo request and serves until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import shlex
import signal
import sys
from pathlib import Path
from typing import IO

import grpc

from signalbox import settings
from signalbox.shell.client_cli import answer_text
from signalbox.shell.up.demo import DEMO_PROMPT
from signalbox.shell.up.stack import LocalStack, StackConfig, StackError

COMMAND = "up"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``signalbox up`` and ``signalbox simulator``."""
    from signalbox.shell import simulator

    simulator.register(commands)
    parser = commands.add_parser(
        COMMAND, help="run the whole system locally with a demo tenant, and call it once"
    )
    settings.add(
        parser,
        "--data-dir",
        type=settings.directory,
        env="SIGNALBOX_UP_DATA_DIR",
        default="var/up",
        help="where the control plane (and its PostgreSQL), the node and the logs keep their files",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--controlplane-listen",
        env="SIGNALBOX_UP_CONTROLPLANE_LISTEN",
        type=settings.address,
        default="127.0.0.1:7700",
        help="HOST:PORT of the control plane (port 0: any free port)",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--controlplane-node-listen",
        env="SIGNALBOX_UP_CONTROLPLANE_NODE_LISTEN",
        type=settings.address,
        default="127.0.0.1:7703",
        help="HOST:PORT of the control plane's node port (config sync over mutual TLS; port 0: any free port)",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--dataplane-listen",
        env="SIGNALBOX_UP_DATAPLANE_LISTEN",
        type=settings.address,
        default="127.0.0.1:7701",
        help="HOST:PORT of the data-plane node's Infer API (port 0: any free port)",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--dataplane-http-listen",
        env="SIGNALBOX_UP_DATAPLANE_HTTP_LISTEN",
        type=settings.address,
        default="127.0.0.1:7704",
        help="HOST:PORT of the node's OpenAI-compatible HTTP front door (port 0: any free port)",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--dataplane-metrics-listen",
        env="SIGNALBOX_UP_DATAPLANE_METRICS_LISTEN",
        type=settings.address,
        default="127.0.0.1:7705",
        help="HOST:PORT of the node's Prometheus endpoint (port 0: any free port)",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--controlplane-metrics-listen",
        env="SIGNALBOX_UP_CONTROLPLANE_METRICS_LISTEN",
        type=settings.address,
        default="127.0.0.1:7706",
        help="HOST:PORT of the control plane's Prometheus endpoint (port 0: any free port)",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--simulator-listen",
        env="SIGNALBOX_UP_SIMULATOR_LISTEN",
        type=settings.address,
        default="127.0.0.1:7702",
        help="HOST:PORT of the simulated upstream (port 0: any free port)",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--startup-timeout",
        env="SIGNALBOX_UP_STARTUP_TIMEOUT",
        default=120.0,
        type=settings.seconds,
        help="seconds each process gets to become healthy",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--once",
        env="SIGNALBOX_UP_ONCE",
        default=False,
        action="store_true",
        help="send the demo request, then stop everything and exit",
        command=COMMAND,
    )
    parser.set_defaults(handler=run)


def run(ns: argparse.Namespace) -> int:
    """The ``signalbox up`` handler."""
    from signalbox.shell.extras import missing_controlplane_extra

    if missing := missing_controlplane_extra():
        print(
            f"signalbox up: needs the control plane, which is not installed (no {', '.join(missing)}):"
            " pip install 'signalbox[controlplane]'",
            file=sys.stderr,
        )
        return 1
    config = StackConfig(
        data_dir=Path(ns.data_dir).resolve(),
        controlplane_listen=ns.controlplane_listen,
        controlplane_node_listen=ns.controlplane_node_listen,
        dataplane_listen=ns.dataplane_listen,
        dataplane_http_listen=ns.dataplane_http_listen,
        dataplane_metrics_listen=ns.dataplane_metrics_listen,
        controlplane_metrics_listen=ns.controlplane_metrics_listen,
        simulator_listen=ns.simulator_listen,
        startup_timeout=ns.startup_timeout,
    ).with_concrete_ports()
    return asyncio.run(_up(config, once=ns.once, out=sys.stdout))


def try_it(config: StackConfig, api_key: str) -> list[tuple[str, str]]:
    """Commands a newcomer can paste into any shell: absolute paths, so no virtualenv needs
    to be active, and the real key (``sbx_...``)."""
    python = shlex.quote(sys.executable)
    base_url = f"http://{config.dataplane_http_listen}/v1"
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hello"}]})
    commands = [
        (
            "gRPC, with the signalbox client",
            f"{python} -m signalbox infer --target {config.dataplane_listen} --api-key {api_key} hello",
        ),
        (
            "HTTP, with curl",
            f"curl -s {base_url}/chat/completions -H {shlex.quote('Authorization: Bearer ' + api_key)}"
            f" -H 'Content-Type: application/json' -d {shlex.quote(body)}",
        ),
    ]
    if importlib.util.find_spec("openai") is not None:
        script = (
            "from openai import OpenAI; "
            f"client = OpenAI(base_url={base_url!r}, api_key={api_key!r}); "
            "print(client.chat.completions.create(model='auto', "
            "messages=[{'role': 'user', 'content': 'hello'}]).choices[0].message.content)"
        )
        commands.append(("HTTP, with the openai SDK", f"{python} -c {shlex.quote(script)}"))
    else:
        commands.append(
            ("HTTP, with the openai SDK (pip install openai first)", f"OpenAI(base_url={base_url!r})")
        )
    return commands


async def _up(config: StackConfig, *, once: bool, out: IO[str]) -> int:
    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    stack = LocalStack(config)
    stopping = asyncio.Event()
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        # During start-up there is nothing to wait for: cancel it and clean up.
        stopping.set()
        if main is not None and not serving.is_set():
            main.cancel()

    serving = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await stack.start(progress=lambda line: say(f"signalbox up: {line}"))
        response = await stack.demo_request()
        say()
        say(f"request:  {DEMO_PROMPT}")
        say(f"answer:   {answer_text(response.message)}")
        say(f"model:    {response.model} (provider {response.provider})")
        say(f"evidence: {response.evidence_id}")
        say(f"correlation: {response.correlation_id}  snapshot: v{response.snapshot_version}")
        say()
        say("Call it yourself (each works pasted into a new shell):")
        for title, command in try_it(config, stack.api_key):
            say(f"  {title}:")
            say(f"    {command}")
        say(f"Admin token (shown once): {stack.admin_token}")
        say(f"Logs: {stack.log_dir}")
        if once:
            return 0
        serving.set()
        say("Serving. Press Ctrl-C to stop.")
        stop_wait = asyncio.ensure_future(stopping.wait())
        child_wait = asyncio.ensure_future(stack.wait_for_child_exit())
        done, _ = await asyncio.wait({stop_wait, child_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        child_wait.cancel()
        if child_wait in done and not child_wait.cancelled():
            say(f"signalbox up: {child_wait.result()}")
            return 1
        say("signalbox up: stopping")
        return 0
    except asyncio.CancelledError:
        say("signalbox up: interrupted, stopping")
        return 0 if stopping.is_set() else 1
    except (StackError, grpc.aio.AioRpcError) as exc:
        message = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        code = f"{exc.code().name}: " if isinstance(exc, grpc.aio.AioRpcError) else ""
        print(f"signalbox up: {code}{message}\n(logs in {stack.log_dir})", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await stack.stop()
