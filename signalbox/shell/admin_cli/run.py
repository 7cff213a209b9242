"""Running one ``signalbox admin`` command: a channel with the token and deadline on every
call, the output as a table, text or JSON, and a gRPC error as one line and an exit code."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from signalbox import settings, tls
from signalbox.api.admin.v1 import admin_pb2_grpc
from signalbox.errors import Error
from signalbox.shell.admin_cli.commands.base import Action, Stub
from signalbox.shell.admin_cli.output import Output, table
from signalbox.text import printable

EXIT_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.UNAUTHENTICATED: 3,
    grpc.StatusCode.PERMISSION_DENIED: 4,
    grpc.StatusCode.NOT_FOUND: 5,
    grpc.StatusCode.ALREADY_EXISTS: 6,
    grpc.StatusCode.FAILED_PRECONDITION: 7,
    grpc.StatusCode.UNAVAILABLE: 8,
}


MAX_REPLY_BYTES = 64 * 1024 * 1024
"""Largest Admin API reply taken (the control plane's default send limit)."""


def admin_command(ns: argparse.Namespace) -> int:
    if not ns.token and not ns.client_cert:
        # A client certificate mapped to an admin identity authenticates without a token.
        print(
            "signalbox admin: --token / SIGNALBOX_ADMIN_TOKEN is required (or --client-cert of an "
            "admin identity)",
            file=sys.stderr,
        )
        return 3
    undecodable = settings.not_utf8(ns)
    if undecodable is not None:
        print(f"signalbox admin: {undecodable}: not UTF-8 text", file=sys.stderr)
        return 2
    action: Action = ns.admin_action

    async def run() -> Output:
        # A bulk import's reply carries every new key: larger than gRPC's 4 MiB default.
        options = [("grpc.max_receive_message_length", MAX_REPLY_BYTES)]
        async with tls.aio_channel(ns.target, tls.client_tls(ns), options) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            metadata = _credentials(ns)
            wrapped = _with_call_options(stub, metadata, ns.timeout)
            return await action(wrapped, ns)

    async def watch() -> Output:
        # ``node list --watch``: one channel, the table redrawn in place until Ctrl-C
        # (or, hidden, for --iterations frames).
        async with tls.aio_channel(ns.target, tls.client_tls(ns)) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            metadata = _credentials(ns)
            wrapped = _with_call_options(stub, metadata, ns.timeout)
            frames = 0
            while True:
                out = await action(wrapped, ns)
                frames += 1
                if sys.stdout.isatty():
                    sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: redraw in place
                stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
                print(f"every {ns.interval:g}s, {stamp} UTC (Ctrl-C to stop)")
                _print(out, ns)
                sys.stdout.flush()
                if ns.iterations and frames >= ns.iterations:
                    return out
                await asyncio.sleep(ns.interval)

    try:
        if getattr(ns, "watch", False):
            asyncio.run(watch())
            return 0
        out = asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    except grpc.aio.AioRpcError as exc:
        # The details are the server's text: escaped, one bounded line (signalbox.text).
        print(f"signalbox admin: {exc.code().name}: {printable(exc.details())}", file=sys.stderr)
        return EXIT_CODES.get(exc.code(), 1)
    except (OSError, tls.TlsConfigError) as exc:
        print(f"signalbox admin: {exc}", file=sys.stderr)
        return 1
    except Error as exc:  # refused before sending (controlplane.limits)
        print(f"signalbox admin: {exc.status.name}: {exc.message}", file=sys.stderr)
        return EXIT_CODES.get(exc.status, 1)
    _print(out, ns)
    return out.exit_code


def _credentials(ns: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The token's metadata; none when the client certificate is the credential."""
    return (("authorization", f"Bearer {ns.token}"),) if ns.token else ()


def _print(out: Output, ns: argparse.Namespace) -> None:
    if ns.json:
        print(json_format.MessageToJson(out.message, preserving_proto_field_name=True, indent=2))
    elif out.text is not None:
        print(out.text, end="")
    else:
        print(table(out.headers, out.rows))


class _with_call_options:
    """A stub whose every call carries the token and the deadline."""

    def __init__(self, stub: Stub, metadata: tuple[tuple[str, str], ...], timeout: float) -> None:
        self._stub = stub
        self._metadata = metadata
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def call(request: Message) -> Any:
            # The control plane's own check of what it can store, before anything is sent.
            from controlplane.limits import check_request

            if isinstance(request, Message):  # a client stream's messages are data (ImportEvidence)
                check_request(request)
            return method(request, metadata=self._metadata, timeout=self._timeout)

        return call
