"""Per-tenant content opt-in: a FULL tenant's records carry the request's messages and the
answer's text (capped, the rest marked truncated; digests always there); a DIGEST tenant's
records, the default, carry no content: its prompt is nowhere in the log's bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.evidence import segments
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.pipeline.trace import CONTENT_MAX_CHARS
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import API_KEY, AUTH, NodeFactory, chat, envelope, snapshot

FULL_MARKER = "opt-in-marker-5d1c2a9e"
DIGEST_MARKER = "never-stored-marker-8f3b77c1"


def _with_content(version: int, base_url: str, content: snapshot_pb2.EvidenceContent.ValueType) -> Any:
    snap = snapshot(version, base_url)
    if content != snapshot_pb2.EVIDENCE_CONTENT_DIGEST:
        snap.tenants[0].evidence.content = content
    return snap


def _log_bytes(path: Path) -> bytes:
    return b"".join(s.path.read_bytes() for s in segments.all_segments(path))


async def test_full_tenants_records_carry_capped_content_digest_tenants_never(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    node = await start_node()
    full = _with_content(1, simulator.base_url, snapshot_pb2.EVIDENCE_CONTENT_FULL)
    assert (await node.store.apply(envelope(full, signing_key))).accepted
    long_prompt = FULL_MARKER + "y" * (CONTENT_MAX_CHARS + 500)
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        served = await stub.Infer(
            chat(f"say {FULL_MARKER}", correlation_id="cid-full"), metadata=AUTH, timeout=10
        )
        await stub.Infer(chat(long_prompt, correlation_id="cid-long"), metadata=AUTH, timeout=10)
        events = [
            e
            async for e in stub.InferStream(
                chat(FULL_MARKER, correlation_id="cid-stream"), metadata=AUTH, timeout=10
            )
        ]
        digest_only = _with_content(2, simulator.base_url, snapshot_pb2.EVIDENCE_CONTENT_DIGEST)
        assert (await node.store.apply(envelope(digest_only, signing_key))).accepted
        await stub.Infer(chat(f"say {DIGEST_MARKER}", correlation_id="cid-digest"), metadata=AUTH, timeout=10)
        async for _ in stub.InferStream(
            chat(DIGEST_MARKER, correlation_id="cid-digest-stream"), metadata=AUTH
        ):
            pass
    assert events

    path = log_path(tmp_path / "node", "node-test")
    records = {r["correlation_id"]: r for r in read_records(path)}
    content = records["cid-full"]["content"]
    assert content["request"] == [{"role": "user", "text": f"say {FULL_MARKER}"}]
    assert content["response"] == served.message.content[0].text
    assert content["truncated"] is False
    assert len(records["cid-full"]["request_sha256"]) == 64  # digests always there
    assert len(records["cid-full"]["response_sha256"]) == 64

    long = records["cid-long"]["content"]
    assert long["truncated"] is True
    assert long["request"][0]["text"] == long_prompt[:CONTENT_MAX_CHARS]
    streamed = records["cid-stream"]["content"]
    assert streamed["request"][0]["text"] == FULL_MARKER
    assert streamed["response"] == "".join(e.delta.text for e in events if e.HasField("delta"))
    assert streamed["response"]

    assert "content" not in records["cid-digest"]
    assert "content" not in records["cid-digest-stream"]
    raw = _log_bytes(path)
    assert FULL_MARKER.encode() in raw
    assert DIGEST_MARKER.encode() not in raw
    # Secrets stay out whatever the tenant chose: the API key is only its id.
    assert API_KEY.encode() not in raw
    assert {json.loads(line)["api_key_id"] for line in raw.splitlines()} == {"k-acme"}
