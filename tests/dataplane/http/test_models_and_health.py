"""``GET /v1/models/{model}`` through the official SDK (``client.models.retrieve``), and the
HTTP door's ``/healthz`` and ``/readyz`` for load balancers and probes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from tests.dataplane.conftest import API_KEY, NodeFactory, envelope, snapshot


@pytest.fixture
async def node(start_node: NodeFactory) -> DataPlaneNode:
    """A node with its HTTP door up and no snapshot yet."""
    return await start_node(http_listen="127.0.0.1:0")


@pytest.fixture
async def served(node: DataPlaneNode, simulator: Any, signing_key: Ed25519PrivateKey) -> DataPlaneNode:
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    return node


@pytest.fixture
async def client(served: DataPlaneNode) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=f"http://{served.http_address}/v1", api_key=API_KEY, max_retries=0)
    async with sdk:
        yield sdk


async def _get(node: DataPlaneNode, path: str, method: str = "GET") -> tuple[int, dict[str, Any], str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"http://{node.http_address}{path}") as response,
    ):
        return response.status, await response.json(), response.headers.get("allow", "")


async def test_retrieve_answers_a_model_the_caller_may_use(client: openai.AsyncOpenAI) -> None:
    model = await client.models.retrieve("sim-fast")
    assert (model.id, model.object, model.owned_by) == ("sim-fast", "model", "signalbox")


@pytest.mark.parametrize(
    "name",
    [
        "sim-secret",  # exists, but acme's policy does not allow it
        "no-such-model",
        "%ff%fe",  # not UTF-8 once decoded
        "sim%2Ffast",  # a slash, encoded
        "x" * 5000,
    ],
)
async def test_retrieve_of_any_other_model_is_404_model_not_found(
    client: openai.AsyncOpenAI, name: str
) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        await client.models.retrieve(name)
    assert refused.value.code == "model_not_found"
    assert len(refused.value.message) < 300
    assert "does not exist or this API key may not use it" in refused.value.message


async def test_retrieve_needs_a_valid_key(served: DataPlaneNode) -> None:
    sdk = openai.AsyncOpenAI(base_url=f"http://{served.http_address}/v1", api_key="sbx_nope", max_retries=0)
    async with sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.retrieve("sim-fast")


async def test_readiness_follows_the_snapshot_and_liveness_is_always_up(
    node: DataPlaneNode, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    assert await _get(node, "/healthz") == (200, {"status": "ok"}, "")
    assert await _get(node, "/readyz") == (
        503,
        {"status": "not ready", "reason": "no valid snapshot yet"},
        "",
    )
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    assert await _get(node, "/readyz") == (200, {"status": "ready"}, "")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/readyz", "GET, HEAD"),
        ("DELETE", "/v1/models/sim-fast", "GET, HEAD"),
        ("PUT", "/healthz", "GET, HEAD"),
    ],
)
async def test_other_methods_are_405_naming_the_allowed_one(
    served: DataPlaneNode, method: str, path: str, allow: str
) -> None:
    status, body, allowed = await _get(served, path, method)
    assert status == 405
    assert allowed == allow
    assert f"{method} is not allowed" in body["error"]["message"]


async def test_every_503_says_when_to_retry(node: DataPlaneNode) -> None:
    # A node with no snapshot yet answers 503: only a tenant failing closed for want of
    # quota said when to retry; these left the caller's retry loop to guess.
    hi: Any = [{"role": "user", "content": "hi"}]
    async with openai.AsyncOpenAI(
        base_url=f"http://{node.http_address}/v1", api_key=API_KEY, max_retries=0
    ) as sdk:
        for call in (
            lambda: sdk.chat.completions.create(model="sim-fast", messages=hi),
            lambda: sdk.chat.completions.create(model="sim-fast", messages=hi, stream=True),
            lambda: sdk.embeddings.create(model="sim-embed", input="x"),
            lambda: sdk.models.list(),
            lambda: sdk.models.retrieve("sim-fast"),
        ):
            with pytest.raises(openai.InternalServerError) as refused:
                await call()
            assert refused.value.status_code == 503
            assert refused.value.response.headers["retry-after"] == "1"
            assert "no valid configuration snapshot" in refused.value.message
