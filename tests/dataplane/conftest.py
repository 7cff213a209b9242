"""Shared pieces of the data-plane tests: signed snapshots, running nodes, a gated upstream.

Everything is real: nodes are ``DataPlaneNode``s on 127.0.0.1:0 called over
grpc.aio, upstreams are HTTP servers on 127.0.0.1:0 (the built-in simulator, or
the small gated server below when a test must hold a stream open).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataplane.app import DataPlaneNode
from dataplane.node_settings import NodeSettings
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.fixtures.keys import sign_payload

API_KEY = "sk-test-acme-0123456789"
OTHER_KEY = "sk-test-other-0123456789"
EXPIRED_KEY = "sk-test-expired-0123456789"
INACTIVE_KEY = "sk-test-inactive-0123456789"
AUTH = (("authorization", f"Bearer {API_KEY}"),)

CHAT_CAPS = (common_pb2.CAPABILITY_CHAT, common_pb2.CAPABILITY_STREAMING, common_pb2.CAPABILITY_TOOLS)


def snapshot(
    version: int,
    base_url: str,
    *,
    deployment: str = "test",
    allowed: Sequence[str] = ("sim-fast", "sim-smart", "sim-embed"),
    default_model: str = "sim-fast",
    provider_type: str = "simulated",
    credential_env: str = "",
    credential_file: str = "",
    expires_at: float | None = None,
    max_output_tokens: int = 4096,
    timeout_ms: int = 0,
    rules: Sequence[dict[str, Any]] = (),
) -> snapshot_pb2.Snapshot:
    """A complete, consistent snapshot: tenants acme (active) and dormant (inactive),
    models sim-fast, sim-smart, sim-embed and sim-secret (not allowed for acme), one provider.
    Prices are nano-USD per million tokens."""
    snap = snapshot_pb2.Snapshot(version=version, scope=snapshot_pb2.Scope(deployment=deployment))
    snap.created_at.FromSeconds(1_700_000_000 + version)
    if expires_at is not None:
        snap.expires_at.FromSeconds(int(expires_at))
    snap.tenants.add(id="t-acme", name="acme", active=True)
    snap.tenants.add(id="t-dormant", name="dormant", active=False)
    snap.api_keys.add(
        id="k-acme", tenant_id="t-acme", secret_sha256=hashlib.sha256(API_KEY.encode()).digest()
    )
    expired = snap.api_keys.add(
        id="k-expired", tenant_id="t-acme", secret_sha256=hashlib.sha256(EXPIRED_KEY.encode()).digest()
    )
    expired.expires_at.FromSeconds(1_000_000)
    snap.api_keys.add(
        id="k-dormant", tenant_id="t-dormant", secret_sha256=hashlib.sha256(INACTIVE_KEY.encode()).digest()
    )
    provider = snap.providers.add(
        id="p-sim", name="sim", type=provider_type, base_url=f"{base_url}/v1", timeout_ms=timeout_ms
    )
    if credential_env:
        provider.credential.env = credential_env
    if credential_file:
        provider.credential.file = credential_file
    for alias, price_in, price_out, caps in (
        ("sim-fast", 100_000_000, 400_000_000, CHAT_CAPS),
        ("sim-smart", 2_000_000_000, 8_000_000_000, CHAT_CAPS),
        ("sim-secret", 1, 1, CHAT_CAPS),
        ("sim-embed", 20_000_000, 0, (common_pb2.CAPABILITY_EMBEDDINGS,)),
    ):
        model = snap.models.add(
            id=f"m-{alias}",
            alias=alias,
            capabilities=caps,
            context_window=128_000,
            max_output_tokens=max_output_tokens,
            input_price_nanos_per_mtok=price_in,
            output_price_nanos_per_mtok=price_out,
        )
        model.deployments.add(id=f"d-{alias}", provider_id="p-sim", upstream_model=alias)
    document = {
        "default_model": default_model,
        "allowed_models": list(allowed),
        # One try: tests of upstream failures should fail fast and deterministically.
        "retry": {"max_attempts": 1, "attempts_per_deployment": 1},
    }
    if rules:
        document["rules"] = list(rules)
    snap.policies.add(id="pol-acme", tenant_id="t-acme", version=version, document_json=json.dumps(document))
    return snap


def envelope(snap: snapshot_pb2.Snapshot, *keys: Ed25519PrivateKey) -> snapshot_pb2.SignedEnvelope:
    return sign_payload(snap.SerializeToString(), *keys)


def write_public_key(path: Path, key: Ed25519PrivateKey) -> Path:
    path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path


async def readyz(node: DataPlaneNode) -> tuple[int, dict[str, Any]]:
    """The node's HTTP readiness probe, as a load balancer reads it: status and JSON body."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{node.http_address}/readyz") as response,
    ):
        return response.status, await response.json()


def chat(text: str = "hello", **fields: Any) -> infer_pb2.InferRequest:
    request = infer_pb2.InferRequest(**fields)
    request.messages.add(role=infer_pb2.ROLE_USER).content.add(text=text)
    return request


@pytest.fixture
def trust_key(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Path:
    return write_public_key(tmp_path / "trust.pem", signing_key)


NodeFactory = Callable[..., Awaitable[DataPlaneNode]]


@pytest.fixture
async def start_node(tmp_path: Path, trust_key: Path) -> AsyncIterator[NodeFactory]:
    """Start nodes with test defaults (overridable; ``governance``: the node's governance
    steps); all are stopped at teardown."""
    nodes: list[DataPlaneNode] = []

    async def start(**overrides: Any) -> DataPlaneNode:
        defaults: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "trust_keys": (trust_key,),
            "node_id": "node-test",
            "data_dir": tmp_path / "node",
            "drain_seconds": 5.0,
            "sync_backoff_base": 0.05,
            "sync_backoff_cap": 0.2,
            # Tests wait for shipped evidence: ship every 50 ms rather than every second.
            "evidence_ship_interval": 0.05,
        }
        governance = overrides.pop("governance", None)
        defaults.update(overrides)
        settings = NodeSettings(**defaults)
        if "scope" not in overrides:
            settings = replace(settings, scope=replace(settings.scope, deployment="test"))
        node = DataPlaneNode(settings, governance=governance)
        await node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop(0)


@pytest.fixture
async def serving_node(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> DataPlaneNode:
    """A node serving snapshot 1 against the simulator."""
    node = await start_node()
    result = await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))
    assert result.accepted, result.reason
    return node


@pytest.fixture
async def infer_stub(serving_node: DataPlaneNode) -> AsyncIterator[infer_pb2_grpc.InferServiceStub]:
    async with grpc.aio.insecure_channel(serving_node.address) as channel:
        yield infer_pb2_grpc.InferServiceStub(channel)


# ---- a gated upstream: streams one chunk, then waits for the test ----


@dataclass
class GatedUpstream:
    """OpenAI-compatible SSE upstream whose stream pauses after the first chunk
    until ``release`` is set (or drops the connection there when ``cut`` is set);
    records whether the caller hung up."""

    base_url: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    first_sent: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    cut: bool = False


def _sse_chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-gated",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


@pytest.fixture
async def gated_upstream() -> AsyncIterator[GatedUpstream]:
    gate = GatedUpstream()

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(_sse_chunk(model, {"role": "assistant", "content": "first "}))
            gate.first_sent.set()
            await gate.release.wait()
            if gate.cut:
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(_sse_chunk(model, {"content": "second"}))
            await response.write(_sse_chunk(model, {}, "stop"))
            usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            await response.write(
                f"data: {json.dumps({'id': 'x', 'object': 'chat.completion.chunk', 'created': 1, 'model': model, 'choices': [], 'usage': usage})}\n\n".encode()
            )
            await response.write(b"data: [DONE]\n\n")
            gate.finished.set()
        except (asyncio.CancelledError, ConnectionResetError):
            gate.disconnected.set()
            raise
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    # handler_cancellation: the handler is cancelled when the caller hangs up, which
    # is how a test sees that closing the node's stream closed the upstream request.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    gate.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield gate
    gate.release.set()
    await runner.cleanup()


def pinned_serve_args(pin: Path, trust_key: Path, data_dir: Path, *extra: str) -> list[str]:
    """``signalbox`` arguments for an air-gapped node at site "lab" serving ``pin`` on an
    ephemeral port (``extra`` appended): the node every process-level test starts."""
    return [
        "dataplane",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--snapshot",
        str(pin),
        "--trust-key",
        str(trust_key),
        "--data-dir",
        str(data_dir),
        "--mode",
        "air-gapped",
        "--site",
        "lab",
        *extra,
    ]
