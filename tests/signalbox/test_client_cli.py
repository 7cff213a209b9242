"""``signalbox infer`` against a real node: output, streaming, JSON, and exit codes."""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import pytest

from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.up import LocalStack

pytestmark = pytest.mark.timeout(600)


async def infer(
    stack: LocalStack | None, *args: str, api_key: str | None = None, stdin: str | None = None
) -> tuple[int, str, str]:
    """Run ``signalbox infer`` against ``stack``'s node (``None``: pass --target in ``args``)."""
    target = ("--target", stack.dataplane_target) if stack is not None else ()
    key = api_key if api_key is not None else stack.api_key if stack is not None else ""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        "infer",
        *target,
        "--api-key",
        key,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    data = stdin.encode() if stdin is not None else None
    out, err = await asyncio.wait_for(process.communicate(data), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_prints_the_answer_then_model_and_evidence(local_stack: LocalStack) -> None:
    code, out, err = await infer(local_stack, "hello")

    assert code == 0, err
    assert out == "Simulated answer to: hello\n"
    assert "model: sim-fast" in err
    assert "evidence: " in err
    assert "evidence:  " not in err  # the id is not empty


async def test_prompt_from_stdin(local_stack: LocalStack) -> None:
    code, out, err = await infer(local_stack, "-", stdin="piped in")

    assert code == 0, err
    assert out == "Simulated answer to: piped in\n"


async def test_correlation_id_is_carried_through(local_stack: LocalStack) -> None:
    code, _, err = await infer(local_stack, "--correlation-id", "cli-test-42", "hello")

    assert code == 0, err
    assert "correlation: cli-test-42" in err


async def test_explicit_model_and_stream(local_stack: LocalStack) -> None:
    code, out, err = await infer(local_stack, "--stream", "--model", "sim-smart", "stream this")

    assert code == 0, err
    assert out == "Simulated answer to: stream this\n"
    assert "model: sim-smart" in err


async def test_max_tokens_reaches_the_upstream(local_stack: LocalStack) -> None:
    code, out, err = await infer(local_stack, "--max-tokens", "2", "one two three")

    assert code == 0, err
    assert out == "Simulated answer\n"  # the simulator cut it at two tokens


async def test_json_prints_the_whole_response(local_stack: LocalStack) -> None:
    code, out, err = await infer(local_stack, "--json", "as json")

    assert code == 0, err
    response = json.loads(out)
    assert response["model"] == "sim-fast"
    assert response["evidenceId"]
    assert response["message"]["content"][0]["text"] == "Simulated answer to: as json"


async def test_json_stream_prints_one_event_per_line(local_stack: LocalStack) -> None:
    code, out, err = await infer(local_stack, "--stream", "--json", "a b c")

    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["start"]["model"] == "sim-fast"
    assert "".join(e["delta"].get("text", "") for e in events if "delta" in e) == "Simulated answer to: a b c"
    assert events[-1]["end"]["evidenceId"]


@pytest.mark.parametrize(
    ("args", "api_key", "code", "status"),
    [
        (("hello",), "sk-not-a-real-key", 3, "UNAUTHENTICATED"),
        (("--model", "no-such-model", "hello"), None, 5, "NOT_FOUND"),
        (("--temperature", "7", "hello"), None, 2, "INVALID_ARGUMENT"),
    ],
)
async def test_errors_are_one_line_with_an_exit_code(
    local_stack: LocalStack, args: tuple[str, ...], api_key: str | None, code: int, status: str
) -> None:
    returncode, out, err = await infer(local_stack, *args, api_key=api_key)

    assert returncode == code, err
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"signalbox infer: {status} from {local_stack.dataplane_target}: ")
    if status == "INVALID_ARGUMENT":
        assert "params.temperature" in err  # the message names the field


async def test_unreachable_node_is_unavailable() -> None:
    code, _, err = await infer(None, "--target", "127.0.0.1:1", "--timeout", "5", "hello", api_key="k")

    assert code == 6
    assert err.startswith("signalbox infer: UNAVAILABLE from 127.0.0.1:1")


class _Hostile(infer_pb2_grpc.InferServiceServicer):
    async def Infer(
        self, request: infer_pb2.InferRequest, context: grpc.aio.ServicerContext
    ) -> infer_pb2.InferResponse:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad \x1b]0;pwned\x07\x1b[2Jrequest")


async def test_error_details_from_a_hostile_node_are_escaped() -> None:
    # Only newlines were replaced: an ESC sequence in the details reached the terminal.
    server = grpc.aio.server()
    infer_pb2_grpc.add_InferServiceServicer_to_server(_Hostile(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        code, _, err = await infer(None, "--target", f"127.0.0.1:{port}", "hello", api_key="k")
    finally:
        await server.stop(None)
    assert code != 0
    assert "\x1b" not in err
    assert "\x07" not in err
    assert "bad \\x1b]0;pwned\\x07\\x1b[2Jrequest" in err


async def test_missing_api_key_fails_before_calling(local_stack: LocalStack) -> None:
    code, _, err = await infer(local_stack, "hello", api_key="")

    assert code == 3
    assert "SIGNALBOX_API_KEY" in err
