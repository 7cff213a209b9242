"""Credential references on a real node: only what the operator allows (env prefix, credential
directory) is ever read; a missing or refused credential makes the provider unusable, the
caller gets a generic FAILED_PRECONDITION, and env names and paths reach only the node's log."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.shell.simulator import Simulator
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot
from tests.helpers import eventually

UPSTREAM_KEY = "sk-upstream-only-the-node-knows-0001"
GENERIC = "provider credentials unavailable"


async def _infer(node: DataPlaneNode) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        try:
            response = await stub.Infer(chat("hi"), metadata=AUTH, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, response.text if hasattr(response, "text") else ""


async def _stream_status(node: DataPlaneNode) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        try:
            async for _ in stub.InferStream(chat("hi"), metadata=AUTH, timeout=10):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def _evidence_text(data_dir: Path, count: int) -> str:
    """The node's evidence log once it holds ``count`` records, as text."""
    path = log_path(data_dir, "node-test")

    def written() -> bool:
        return len(list(read_records(path))) >= count

    await eventually(written, message=f"{count} evidence records")
    return path.read_bytes().decode("utf-8", "replace")


async def _apply(node: DataPlaneNode, key: Ed25519PrivateKey, base_url: str, **ref: str) -> None:
    result = await node.store.apply(envelope(snapshot(1, base_url, **ref), key))
    assert result.accepted, result.reason


@pytest.fixture
async def guarded_upstream() -> Any:
    """A simulator that answers only callers presenting ``UPSTREAM_KEY``."""
    async with Simulator(api_key=UPSTREAM_KEY) as sim:
        yield sim


@pytest.mark.parametrize(
    ("ref", "operator_detail"),
    [
        (
            {"credential_env": "SIGNALBOX_CRED_NOT_SET_HERE"},
            "env SIGNALBOX_CRED_NOT_SET_HERE: not set or empty",
        ),
        ({"credential_env": "OTHER_TEAMS_OPENAI_KEY"}, "env OTHER_TEAMS_OPENAI_KEY: outside"),
        ({"credential_file": "missing/key.txt"}, "file missing/key.txt: cannot be found"),
    ],
)
async def test_a_tenant_never_sees_the_reference_only_the_operator_does(
    start_node: NodeFactory,
    guarded_upstream: Simulator,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    ref: dict[str, str],
    operator_detail: str,
) -> None:
    # Set, but outside the node's prefix: must not be read.
    monkeypatch.setenv("OTHER_TEAMS_OPENAI_KEY", UPSTREAM_KEY)
    (tmp_path / "node" / "credentials").mkdir(parents=True)
    node = await start_node()
    with caplog.at_level(logging.WARNING, logger="signalbox.dataplane.config"):
        await _apply(node, signing_key, guarded_upstream.base_url, **ref)
    named = (next(iter(ref.values())),)
    # The operator: the detail, once, in the node's log.
    logged = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(logged) == 1, logged
    assert operator_detail in logged[0]
    # The tenant: a generic FAILED_PRECONDITION on unary and stream calls alike.
    for status, details in (await _infer(node), await _stream_status(node)):
        assert status is grpc.StatusCode.FAILED_PRECONDITION
        assert GENERIC in details
        assert not any(n in details for n in named)
        assert "credential" not in details.replace(GENERIC, "")
    # Nor does the evidence carry it; and nothing reached the upstream.
    text = await _evidence_text(tmp_path / "node", 2)
    assert GENERIC in text
    assert not any(n in text for n in named)
    assert UPSTREAM_KEY not in text
    assert guarded_upstream.stats_json()["total"] == 0


async def test_a_reference_inside_the_prefix_is_resolved_and_sent(
    start_node: NodeFactory,
    guarded_upstream: Simulator,
    signing_key: Ed25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIGNALBOX_CRED_SIM", UPSTREAM_KEY)
    node = await start_node()
    await _apply(node, signing_key, guarded_upstream.base_url, credential_env="SIGNALBOX_CRED_SIM")
    status, _ = await _infer(node)
    assert status is grpc.StatusCode.OK
    assert node.store.require().unusable == {}


async def test_the_operator_sets_the_prefix(
    start_node: NodeFactory,
    guarded_upstream: Simulator,
    signing_key: Ed25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACME_LLM_SIM", UPSTREAM_KEY)
    monkeypatch.setenv("SIGNALBOX_CRED_SIM", UPSTREAM_KEY)
    node = await start_node(credential_env_prefix="ACME_LLM_")
    await _apply(node, signing_key, guarded_upstream.base_url, credential_env="ACME_LLM_SIM")
    assert (await _infer(node))[0] is grpc.StatusCode.OK
    # The default prefix is no longer allowed on this node.
    result = await node.store.apply(
        envelope(snapshot(2, guarded_upstream.base_url, credential_env="SIGNALBOX_CRED_SIM"), signing_key)
    )
    assert result.accepted
    assert "outside this node's credential env prefix 'ACME_LLM_'" in node.store.require().unusable["p-sim"]
    assert (await _infer(node))[0] is grpc.StatusCode.FAILED_PRECONDITION


async def test_a_file_in_the_credential_dir_is_used_and_a_symlink_out_of_it_is_refused(
    start_node: NodeFactory,
    guarded_upstream: Simulator,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    credentials = tmp_path / "operator-credentials"
    (credentials / "sim").mkdir(parents=True)
    (credentials / "sim" / "key").write_text(UPSTREAM_KEY + "\n")
    host_secret = tmp_path / "host-secret"
    host_secret.write_text(UPSTREAM_KEY)
    (credentials / "escape").symlink_to(host_secret)
    node = await start_node(credential_dir=credentials)
    await _apply(node, signing_key, guarded_upstream.base_url, credential_file="sim/key")
    assert (await _infer(node))[0] is grpc.StatusCode.OK

    result = await node.store.apply(
        envelope(snapshot(2, guarded_upstream.base_url, credential_file="escape"), signing_key)
    )
    assert result.accepted
    assert "resolves outside this node's credential directory" in node.store.require().unusable["p-sim"]
    status, details = await _infer(node)
    assert status is grpc.StatusCode.FAILED_PRECONDITION
    assert "escape" not in details

    # An absolute path, even to a real file, is outside by definition.
    result = await node.store.apply(
        envelope(snapshot(3, guarded_upstream.base_url, credential_file=str(host_secret)), signing_key)
    )
    assert result.accepted
    assert "relative" in node.store.require().unusable["p-sim"]


async def test_a_secret_pasted_as_the_reference_is_never_logged_nor_shown(
    start_node: NodeFactory,
    guarded_upstream: Simulator,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pasted = "sk-proj-Q2hhbmdlTWVQbGVhc2UxMjM0NTY3ODkw"
    monkeypatch.setenv(pasted.replace("-", "_").upper(), "irrelevant")
    node = await start_node()
    with caplog.at_level(logging.DEBUG):
        await _apply(node, signing_key, guarded_upstream.base_url, credential_env=pasted)
        status, details = await _infer(node)
    assert status is grpc.StatusCode.FAILED_PRECONDITION
    assert pasted not in details
    assert pasted not in caplog.text
    assert "env <redacted, 40 characters>" in caplog.text
    assert pasted not in await _evidence_text(tmp_path / "node", 1)
