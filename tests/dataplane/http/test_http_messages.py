"""What the HTTP door's errors say: in HTTP's words (headers, body fields and values, not
gRPC's metadata and enum names), and header values as the caller sent them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from dataplane.app import DataPlaneNode
from dataplane.edge.openai import http_wording
from dataplane.errors import PermissionDenied
from dataplane.scopes import KeyScope
from tests.dataplane.conftest import API_KEY

HEADERS = {"authorization": f"Bearer {API_KEY}"}
HI = {"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}]}
TOOL = {"type": "function", "function": {"name": "f"}}
GRPC_WORDS = ("metadata", "REQUIRED", "TOOL", "INVALID_ARGUMENT", "UNAUTHENTICATED", "mode is")


async def _error(
    http: aiohttp.ClientSession, body: Any, headers: dict[str, str], path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, Any]]:
    method = (
        http.post(path, json=body, headers=headers) if body is not None else http.get(path, headers=headers)
    )
    async with method as response:
        return response.status, (await response.json())["error"]


@pytest.mark.parametrize(
    ("body", "headers", "path", "status", "says"),
    [
        (HI, {}, "/v1/chat/completions", 401, "missing 'Bearer <API key or JWT>' header or client certificate"),
        (None, {}, "/v1/models", 401, "missing 'Bearer <API key or JWT>' header or client certificate"),
        ({**HI, "tool_choice": "required"}, HEADERS, "/v1/chat/completions", 400,
         'tool_choice: "required" needs at least one tool in tools'),
        ({**HI, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": ""}}}, HEADERS,
         "/v1/chat/completions", 400, 'tool_choice.function.name: required when tool_choice is {"type": "function"'),
    ],
    ids=["no key", "no key, models", "required without tools", "function without a name"],
)  # fmt: skip
async def test_errors_name_what_an_http_caller_sent_not_grpc_metadata_or_enums(
    http: aiohttp.ClientSession, body: Any, headers: dict[str, str], path: str, status: int, says: str
) -> None:
    # "missing 'Bearer <API key or JWT>' metadata", "REQUIRED needs at least one tool",
    # "required when mode is TOOL": an OpenAI caller sends headers, "required" and
    # {"type": "function"}, none of which the messages named.
    got, error = await _error(http, body, headers, path)
    assert got == status, error
    assert says in error["message"]
    assert not any(word in error["message"] for word in GRPC_WORDS), error["message"]


def test_a_key_scopes_task_refusal_names_the_task_header() -> None:
    # On HTTP the task is the x-signalbox-task header (gRPC's InferRequest.task).
    scope = KeyScope(tasks=frozenset({"review"}))
    for task, says in (
        ("code", "key scope does not allow x-signalbox-task 'code' (allowed: task:review)"),
        ("", "key scope does not allow a request without an x-signalbox-task header (allowed: task:review)"),
    ):
        with pytest.raises(PermissionDenied) as refused:
            scope.check_task(task)
        assert http_wording(str(refused.value)) == says


async def _raw_error(node: DataPlaneNode, head: bytes, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """The status and error of a request sent as ``head`` (its first line and headers, CRLF-ended) and ``body``."""
    host, port = node.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body))
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status, _, rest = answer.partition(b"\r\n\r\n")
    return int(status.split(b" ", 2)[1]), json.loads(rest)["error"]


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("x-signalbox-capabilities: vision, résumé", "x-signalbox-capabilities: 'résumé' is not one of"),
        ("x-signalbox-timeout-ms: 五秒", "not '五秒'"),
        ("Content-Encoding: gzïp", "content-encoding 'gzïp' is not supported"),
    ],
    ids=["capabilities", "timeout", "content-encoding"],
)
async def test_a_utf_8_header_value_reads_as_sent_in_its_error(
    node: DataPlaneNode, header: str, says: str
) -> None:
    # Header bytes were read as ISO-8859-1: 'résumé' came back as 'rÃ©sumÃ©'.
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n%b\r\n" % (
        API_KEY.encode(),
        header.encode(),
    )
    status, error = await _raw_error(node, head, json.dumps(HI).encode())
    assert status in (400, 415), error
    assert says in error["message"], error["message"]
    assert "Ã" not in error["message"]


async def test_a_header_value_that_is_not_utf_8_reads_byte_for_byte_escaped_and_bounded(
    node: DataPlaneNode,
) -> None:
    value = b"\xe9\x85" * 1000  # not UTF-8: each byte one character (U+0085 a control, escaped)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n" % API_KEY.encode()
    status, error = await _raw_error(
        node, head + b"x-signalbox-capabilities: %b\r\n" % value, json.dumps(HI).encode()
    )
    assert status == 400, error
    assert "x-signalbox-capabilities: 'é\\x85é\\x85" in error["message"], error["message"]
    assert len(error["message"]) < 300
