"""Key scopes enforced by a real node over gRPC: operations, tasks and models; a scope
the node does not understand refuses only its key; every refusal has one evidence record."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot
from tests.helpers import eventually

Stub = infer_pb2_grpc.InferServiceStub
Metadata = tuple[tuple[str, str], ...]

KEYS: dict[str, Sequence[str]] = {
    "k-chat": ["op:chat"],
    "k-fast": ["model:sim-fast"],
    "k-review": ["task:review"],
    "k-fast-review": ["model:sim-fast", "model:sim-embed", "task:review", "op:chat", "op:stream"],
    "k-future": ["op:chat", "region:eu"],
}

RULES = [
    # The policy prefers sim-smart, then sim-fast, for task "review".
    {"name": "review", "match": {"tasks": ["review"]}, "models": ["sim-smart", "sim-fast"]},
    {"name": "smart-only", "match": {"tasks": ["smart-only"]}, "models": ["sim-smart"]},
    {
        "name": "mirror",
        "match": {"tasks": ["mirror"]},
        "models": ["sim-fast"],
        "shadow": {"model": "sim-smart", "share": 1.0},
    },
]


def _auth(key_id: str) -> Metadata:
    return (("authorization", f"Bearer secret-{key_id}"),)


def _embed(**fields: Any) -> infer_pb2.EmbedRequest:
    return infer_pb2.EmbedRequest(inputs=["hello"], **fields)


@pytest.fixture
async def stub(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> AsyncIterator[Stub]:
    snap = snapshot(1, simulator.base_url, rules=RULES)
    for key_id, scopes in KEYS.items():
        snap.api_keys.add(
            id=key_id,
            tenant_id="t-acme",
            secret_sha256=hashlib.sha256(f"secret-{key_id}".encode()).digest(),
            scopes=scopes,
        )
    node = await start_node()
    result = await node.store.apply(envelope(snap, signing_key))
    assert result.accepted, result.reason  # an unknown scope kind does not NACK the snapshot
    async with grpc.aio.insecure_channel(node.address) as channel:
        yield Stub(channel)


async def _drain(call: Any) -> None:
    """Await a unary call, or read a stream to its end."""
    if hasattr(call, "__aiter__"):
        async for _ in call:
            pass
    else:
        await call


async def _refused(call: Any) -> str:
    """The PERMISSION_DENIED message of a unary call or a stream, without the correlation id."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _drain(call)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    return (info.value.details() or "").rpartition(" (correlation id ")[0]


async def _stream(stub: Stub, request: infer_pb2.InferRequest, metadata: Metadata) -> str:
    events = [e async for e in stub.InferStream(request, metadata=metadata, timeout=10)]
    return events[0].start.model


def _records(tmp_path: Path) -> list[dict[str, Any]]:
    return list(read_records(log_path(tmp_path / "node", "node-test")))


async def _one_refusal_each(tmp_path: Path, refused: dict[str, str]) -> None:
    """Exactly one evidence record per refused correlation id: PERMISSION_DENIED, the key named."""

    def check() -> bool:
        records = _records(tmp_path)
        for cid, key_id in refused.items():
            mine = [r for r in records if r["correlation_id"] == cid]
            assert len(mine) == 1, (cid, mine)
            assert mine[0]["outcome"]["code"] == "PERMISSION_DENIED"
            assert mine[0]["api_key_id"] == key_id
        return True

    await eventually(check, message="one evidence record per refusal")


async def test_op_scope_allows_chat_and_refuses_stream_and_embed(stub: Stub, tmp_path: Path) -> None:
    auth = _auth("k-chat")
    response = await stub.Infer(chat(correlation_id="cid-chat-ok"), metadata=auth, timeout=10)
    assert response.model == "sim-fast"

    message = await _refused(stub.InferStream(chat(correlation_id="cid-stream"), metadata=auth, timeout=10))
    assert message == "key scope does not allow operation 'stream' (allowed: op:chat)"
    message = await _refused(stub.Embed(_embed(correlation_id="cid-embed"), metadata=auth, timeout=10))
    assert message == "key scope does not allow operation 'embed' (allowed: op:chat)"
    await _one_refusal_each(tmp_path, {"cid-stream": "k-chat", "cid-embed": "k-chat"})


async def test_model_scope_refuses_an_explicit_model_and_drops_policy_candidates(
    stub: Stub, tmp_path: Path
) -> None:
    auth = _auth("k-fast")
    message = await _refused(
        stub.Infer(chat(model="sim-smart", correlation_id="cid-explicit"), metadata=auth, timeout=10)
    )
    assert message == "key scope does not allow model 'sim-smart' (allowed: model:sim-fast)"
    explicit = await stub.Infer(chat(model="sim-fast"), metadata=auth, timeout=10)
    assert explicit.model == "sim-fast"

    # The policy would choose sim-smart, then sim-fast: the key is served by sim-fast.
    routed = await stub.Infer(chat(task="review", correlation_id="cid-routed"), metadata=auth, timeout=10)
    assert routed.model == "sim-fast"
    assert [(d.model, d.reason) for d in routed.routing.dropped] == [
        ("sim-smart", "outside the key's scope (model:sim-fast)")
    ]
    assert await _stream(stub, chat(task="review"), auth) == "sim-fast"
    (record,) = [r for r in _records(tmp_path) if r["correlation_id"] == "cid-routed"]
    assert record["routing"]["dropped"] == [["sim-smart", "outside the key's scope (model:sim-fast)"]]
    assert record["routing"]["order"] == ["sim-fast@sim"]

    # A rule whose every model is outside the scope: refused, naming the scope.
    message = await _refused(
        stub.Infer(chat(task="smart-only", correlation_id="cid-none"), metadata=auth, timeout=10)
    )
    assert message == (
        "key scope allows none of the models the policy chose ('sim-smart'; allowed: model:sim-fast)"
    )
    # Embeddings route to sim-embed, which this key may not use.
    message = await _refused(stub.Embed(_embed(correlation_id="cid-embed-model"), metadata=auth, timeout=10))
    assert "allowed: model:sim-fast" in message
    await _one_refusal_each(
        tmp_path, {"cid-explicit": "k-fast", "cid-none": "k-fast", "cid-embed-model": "k-fast"}
    )
    (refusal,) = [r for r in _records(tmp_path) if r["correlation_id"] == "cid-none"]
    assert refusal["routing"]["dropped"] == [["sim-smart", "outside the key's scope (model:sim-fast)"]]


async def test_model_scope_also_keeps_the_request_from_a_shadow_outside_it(
    stub: Stub, simulator: Any, tmp_path: Path
) -> None:
    scoped = await stub.Infer(chat(task="mirror", correlation_id="cid-scoped"), metadata=_auth("k-fast"))
    assert scoped.model == "sim-fast"
    unscoped = await stub.Infer(chat(task="mirror", correlation_id="cid-unscoped"), metadata=AUTH)
    assert unscoped.model == "sim-fast"
    await eventually(lambda: any(r["kind"] == "shadow" for r in _records(tmp_path)), message="shadow record")
    shadows = [r["correlation_id"] for r in _records(tmp_path) if r["kind"] == "shadow"]
    assert shadows == ["cid-unscoped"]
    assert simulator.stats("sim-smart").chat == 1


async def test_task_scope(stub: Stub, tmp_path: Path) -> None:
    auth = _auth("k-review")
    served = await stub.Infer(chat(task="review"), metadata=auth, timeout=10)
    assert served.model == "sim-smart"  # no model scope: the policy's choice stands
    assert await _stream(stub, chat(task="review"), auth) == "sim-smart"
    message = await _refused(
        stub.Infer(chat(task="code", correlation_id="cid-task"), metadata=auth, timeout=10)
    )
    assert message == "key scope does not allow task 'code' (allowed: task:review)"
    message = await _refused(stub.Infer(chat(correlation_id="cid-no-task"), metadata=auth, timeout=10))
    assert message == "key scope does not allow a request without a task (allowed: task:review)"
    message = await _refused(stub.Embed(_embed(task="x" * 1000, correlation_id="cid-long"), metadata=auth))
    assert len(message) < 200
    await _one_refusal_each(
        tmp_path, {"cid-task": "k-review", "cid-no-task": "k-review", "cid-long": "k-review"}
    )


async def test_kinds_combine(stub: Stub) -> None:
    auth = _auth("k-fast-review")
    routed = await stub.Infer(chat(task="review"), metadata=auth, timeout=10)
    assert routed.model == "sim-fast"
    assert await _stream(stub, chat(task="review"), auth) == "sim-fast"
    assert "operation 'embed'" in await _refused(stub.Embed(_embed(task="review"), metadata=auth, timeout=10))
    assert "task 'other'" in await _refused(stub.Infer(chat(task="other"), metadata=auth, timeout=10))


async def test_unscoped_key_is_unaffected(stub: Stub) -> None:
    assert (await stub.Infer(chat(task="review"), metadata=AUTH, timeout=10)).model == "sim-smart"
    assert (await stub.Infer(chat(model="sim-smart"), metadata=AUTH, timeout=10)).model == "sim-smart"
    assert await _stream(stub, chat(), AUTH) == "sim-fast"
    assert (await stub.Embed(_embed(), metadata=AUTH, timeout=10)).model == "sim-embed"


async def test_a_scope_the_node_does_not_understand_refuses_only_that_key(stub: Stub, tmp_path: Path) -> None:
    message = await _refused(stub.Infer(chat(correlation_id="cid-future"), metadata=_auth("k-future")))
    assert message == (
        "key scope 'region:eu' is not understood by this node "
        "(unknown scope kind 'region' (known: model, op, task)); the key is refused"
    )
    assert (await stub.Infer(chat(), metadata=_auth("k-chat"), timeout=10)).model == "sim-fast"
    assert (await stub.Infer(chat(), metadata=AUTH, timeout=10)).model == "sim-fast"
    await _one_refusal_each(tmp_path, {"cid-future": "k-future"})
