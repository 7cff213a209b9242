"""``signalbox infer``: call the Infer API from a shell.

Prints the answer on stdout and, on stderr, the model that answered and the
evidence record id, so ``$(signalbox infer ...)`` captures only the answer.
gRPC errors become one line on stderr and an exit code from one table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

import grpc
from google.protobuf import json_format

from signalbox import settings, tls
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.text import printable

COMMAND = "infer"


@dataclass(frozen=True, slots=True)
class ExitCode:
    """How one gRPC status ends the command."""

    code: int
    """The process exit status."""
    hint: str
    """What the caller can do about it, appended to the message."""


# Exit 1 is anything not listed; 2 is argparse's own usage error, reused for bad input.
EXIT_CODES: dict[grpc.StatusCode, ExitCode] = {
    grpc.StatusCode.INVALID_ARGUMENT: ExitCode(2, "check the request"),
    grpc.StatusCode.UNAUTHENTICATED: ExitCode(3, "check --api-key / SIGNALBOX_API_KEY"),
    grpc.StatusCode.PERMISSION_DENIED: ExitCode(4, "the tenant's policy does not allow this"),
    grpc.StatusCode.NOT_FOUND: ExitCode(5, "check --model"),
    grpc.StatusCode.UNAVAILABLE: ExitCode(6, "is the node running and does it have a snapshot?"),
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode(7, "raise --timeout or retry"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ExitCode(8, "rate limited; retry later"),
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``signalbox infer``."""
    parser = commands.add_parser(COMMAND, help="send one request to a data-plane node's Infer API")
    settings.add(
        parser,
        "--target",
        env="SIGNALBOX_INFER_TARGET",
        type=settings.address,
        default="127.0.0.1:7701",
        help="HOST:PORT of a data-plane node",
        command=COMMAND,
    )
    tls.add_client_flags(parser, env_prefix="SIGNALBOX_INFER", command=COMMAND)
    settings.add(
        parser,
        "--api-key",
        env="SIGNALBOX_API_KEY",
        type=settings.credential,
        help="the caller's API key",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--model",
        env="SIGNALBOX_INFER_MODEL",
        default="",
        help="model alias (empty: the tenant's policy chooses)",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--stream",
        env="SIGNALBOX_INFER_STREAM",
        default=False,
        action="store_true",
        help="print the answer as it is produced (InferStream)",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--json",
        env="SIGNALBOX_INFER_JSON",
        default=False,
        action="store_true",
        help="print the full response (or each stream event) as JSON",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--timeout",
        env="SIGNALBOX_INFER_TIMEOUT",
        default=60.0,
        type=settings.seconds,
        help="deadline of the call in seconds",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--system",
        env="SIGNALBOX_INFER_SYSTEM",
        default="",
        help="an optional system message sent before the prompt",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--max-tokens",
        env="SIGNALBOX_INFER_MAX_TOKENS",
        type=_max_tokens,
        help="upper bound on output tokens (unset: the model's default)",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--temperature",
        env="SIGNALBOX_INFER_TEMPERATURE",
        type=float,
        help="sampling temperature (unset: the model's default)",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--correlation-id",
        env="SIGNALBOX_CORRELATION_ID",
        default="",
        help="caller-supplied correlation id (empty: the node generates one)",
        command=COMMAND,
    )
    parser.add_argument("prompt", help='the user message ("-" reads it from stdin)')
    parser.set_defaults(handler=run)


def _max_tokens(text: str) -> int:
    """``--max-tokens``: what the request's uint32 holds (more was a ValueError traceback)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= MAX_TOKENS:
        raise argparse.ArgumentTypeError(
            f"{printable(text, 40)} is not a whole number from 1 to {MAX_TOKENS}"
        )
    return value


MAX_TOKENS = 2**32 - 1


def build_request(
    prompt: str,
    *,
    model: str = "",
    system: str = "",
    correlation_id: str = "",
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> infer_pb2.InferRequest:
    """An InferRequest with an optional system message and one user message."""
    request = infer_pb2.InferRequest(model=model, correlation_id=correlation_id)
    if max_tokens is not None:
        request.params.max_output_tokens = max_tokens
    if temperature is not None:
        request.params.temperature = temperature
    if system:
        request.messages.add(role=infer_pb2.ROLE_SYSTEM).content.add(text=system)
    request.messages.add(role=infer_pb2.ROLE_USER).content.add(text=prompt)
    return request


def answer_text(message: infer_pb2.Message) -> str:
    """The text of an answer, with any tool calls shown as ``name(arguments)``."""
    text = "".join(part.text for part in message.content if part.WhichOneof("part") == "text")
    calls = [f"{call.name}({call.arguments_json})" for call in message.tool_calls]
    return "\n".join([text, *calls] if text else calls)


def run(ns: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Send the request; print the answer, the model and the evidence id. Returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    if not ns.api_key:
        print("signalbox infer: no API key: pass --api-key or set SIGNALBOX_API_KEY", file=err)
        return EXIT_CODES[grpc.StatusCode.UNAUTHENTICATED].code
    undecodable = settings.not_utf8(ns)
    if undecodable is not None:
        print(f"signalbox infer: {undecodable}: not UTF-8 text", file=err)
        return 2
    try:
        prompt = sys.stdin.buffer.read().decode("utf-8") if ns.prompt == "-" else ns.prompt
    except UnicodeDecodeError as exc:
        print(f"signalbox infer: the prompt on stdin is not UTF-8 text (byte {exc.start})", file=err)
        return 2
    request = build_request(
        prompt,
        model=ns.model,
        system=ns.system,
        correlation_id=ns.correlation_id,
        max_tokens=ns.max_tokens,
        temperature=ns.temperature,
    )
    metadata = (("authorization", f"Bearer {ns.api_key}"),)
    try:
        channel = tls.sync_channel(ns.target, tls.client_tls(ns))
    except tls.TlsConfigError as exc:
        print(f"signalbox infer: {exc}", file=err)
        return 2
    with channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        try:
            if ns.stream:
                _print_stream(
                    stub.InferStream(request, metadata=metadata, timeout=ns.timeout), ns.json, out, err
                )
            else:
                response = stub.Infer(request, metadata=metadata, timeout=ns.timeout)
                _print_response(response, ns.json, out, err)
        except grpc.RpcError as exc:
            return _report(exc, ns.target, err)
    return 0


def _print_response(response: infer_pb2.InferResponse, as_json: bool, out: TextIO, err: TextIO) -> None:
    if as_json:
        print(json_format.MessageToJson(response, indent=2), file=out)
        return
    print(answer_text(response.message), file=out)
    print(
        f"model: {response.model}  provider: {response.provider}  evidence: {response.evidence_id}"
        f"  correlation: {response.correlation_id}",
        file=err,
    )


def _print_stream(
    events: Iterable[infer_pb2.InferStreamEvent], as_json: bool, out: TextIO, err: TextIO
) -> None:
    start: infer_pb2.StreamStart | None = None
    for event in events:
        if as_json:
            print(json_format.MessageToJson(event, indent=None), file=out, flush=True)
            continue
        kind = event.WhichOneof("event")
        if kind == "start":
            start = event.start
        elif kind == "delta":
            out.write(event.delta.text)
            for call in event.delta.tool_calls:
                out.write(f"{call.name}{'(' if call.name else ''}{call.arguments_fragment}")
            out.flush()
        elif kind == "end":
            print(file=out)
            model = start.model if start is not None else ""
            correlation = start.correlation_id if start is not None else ""
            print(
                f"model: {model}  evidence: {event.end.evidence_id}  correlation: {correlation}",
                file=err,
            )


def _report(exc: grpc.RpcError, target: str, err: TextIO) -> int:
    # Every grpc.RpcError raised by a call is also a grpc.Call carrying code() and details().
    call: grpc.Call = exc  # type: ignore[assignment]
    status = call.code()
    entry = EXIT_CODES.get(status, ExitCode(1, ""))
    # The node's text: escaped (signalbox.text), so neither a newline nor an ESC sequence from
    # a hostile or broken server reaches the terminal, and one bounded line.
    details = printable(call.details() or "")
    hint = f" ({entry.hint})" if entry.hint else ""
    print(f"signalbox infer: {status.name} from {target}: {details}{hint}", file=err)
    return entry.code
