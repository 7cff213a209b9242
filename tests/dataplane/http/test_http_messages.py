"""What the HTTP door's errors say: in HTTP's words (headers, body fields and values, not
gRPC's metadata and enum names), and header values as the caller sent them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.edge.openai import http_wording
from dataplane.errors import PermissionDenied
from dataplane.scopes import KeyScope
from tests.dataplane.conftest import API_KEY, NodeFactory, envelope, snapshot

HEADERS = {"authorization": f"Bearer {API_KEY}"}
HI = {"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}]}
TOOL = {"type": "function", "function": {"name": "f"}}
GRPC_WORDS = ("metadata", "REQUIRED", "TOOL", "INVALID_ARGUMENT", "UNAUTHENTICATED", "mode is")


@pytest.fixture
async def http(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> AsyncIterator[aiohttp.ClientSession]:
    node: DataPlaneNode = await start_node(http_listen="127.0.0.1:0")
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    async with aiohttp.ClientSession(f"http://{node.http_address}") as session:
        yield session


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
