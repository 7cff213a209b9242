"""Bad API-key credentials of every kind over the Infer API: UNAUTHENTICATED, one message that
says nothing about whether a key id exists, nothing of the credential echoed, and the node
keeps serving. (Bad JWTs and client certificates: test_identities.py.)"""

from __future__ import annotations

import base64
import hmac
import secrets
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.auth import INVALID, MISSING
from dataplane.snapshot.hash_key import HashKeys
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.shell.cli import main
from tests.dataplane.conftest import API_KEY, NodeFactory, chat, envelope, snapshot

HASH_KEY = secrets.token_bytes(32)
KEY_ID = uuid.uuid4()
KEY = f"sbx_{KEY_ID.hex}_{secrets.token_urlsafe(32)}"


async def _node(start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey) -> str:
    node = await start_node(api_key_hash_keys=HashKeys({1: HASH_KEY}))
    snap = snapshot(1, simulator.base_url)
    snap.api_keys.add(
        id=str(KEY_ID), tenant_id="t-acme", secret_hmac=hmac.digest(HASH_KEY, KEY.encode(), "sha256")
    )
    result = await node.store.apply(envelope(snap, signing_key))
    assert result.accepted, result.reason
    return node.address


async def _refusal(address: str, metadata: tuple[tuple[str, str], ...]) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await infer_pb2_grpc.InferServiceStub(channel).Infer(chat(), metadata=metadata, timeout=10)
    details = refused.value.details() or ""
    # The correlation id is the request's own: the rest is what the caller learns.
    return refused.value.code(), details.split(" (correlation id ", 1)[0]


async def test_every_bad_api_key_credential_is_unauthenticated_revealing_nothing(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    address = await _node(start_node, simulator, signing_key)
    secret = KEY.split("_", 2)[2]
    other_secret = secrets.token_urlsafe(32)
    cases: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
        "no authorization": ((), MISSING),
        "wrong scheme": ((("authorization", f"Basic {KEY}"),), MISSING),
        "scheme without a token": ((("authorization", "Bearer "),), MISSING),
        "malformed header": ((("authorization", f"Bearer{KEY}"),), MISSING),
        "token with a space": ((("authorization", f"Bearer {KEY} {KEY}"),), INVALID),
        "malformed key": ((("authorization", f"Bearer sbx-{KEY_ID.hex}.{secret}"),), INVALID),
        "truncated key": ((("authorization", f"Bearer {KEY[:-1]}"),), INVALID),
        "id only": ((("authorization", f"Bearer sbx_{KEY_ID.hex}"),), INVALID),
        "unknown key id": ((("authorization", f"Bearer sbx_{uuid.uuid4().hex}_{secret}"),), INVALID),
        "known key id, wrong secret": (
            (("authorization", f"Bearer sbx_{KEY_ID.hex}_{other_secret}"),),
            INVALID,
        ),
        "old-format key, truncated": ((("authorization", f"Bearer {API_KEY[:-1]}"),), INVALID),
        "oversized": ((("authorization", f"Bearer {KEY * 80}"),), INVALID),
    }
    for name, (metadata, expected) in cases.items():
        code, message = await _refusal(address, metadata)
        assert code == grpc.StatusCode.UNAUTHENTICATED, name
        assert message == expected, (name, message)
        assert KEY_ID.hex not in message, name
        assert str(KEY_ID) not in message, name
        assert secret[:8] not in message, name
    # The good keys, of both formats, are still served after all that.
    async with grpc.aio.insecure_channel(address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        for key in (KEY, API_KEY):
            reply = await stub.Infer(chat(), metadata=(("authorization", f"Bearer {key}"),), timeout=10)
            assert reply.model == "sim-fast"


def test_a_bad_hash_key_file_stops_the_node_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "hash-key"
    bad.write_text("not base64 !!\n")
    args = ["dataplane", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "node")]
    assert main([*args, "--api-key-hash-key-file", str(bad)]) == 2
    assert "--api-key-hash-key-file: must be base64 of 32 bytes" in capsys.readouterr().err
    short = tmp_path / "short"
    short.write_bytes(base64.b64encode(b"x" * 16))  # a one-key file of the earlier format
    assert main([*args, "--api-key-hash-key-file", str(short)]) == 2
    assert "--api-key-hash-key-file: must be 32 bytes, got 16" in capsys.readouterr().err
    assert main([*args, "--api-key-hash-key-file", str(tmp_path / "missing")]) == 2
    assert "--api-key-hash-key-file: cannot read" in capsys.readouterr().err
