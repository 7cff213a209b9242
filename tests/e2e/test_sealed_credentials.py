"""Provider credentials sealed to a node group's key, end to end.

The group's key pair comes from ``signalbox dataplane sealing-key generate``; its public key is
registered on the group; ``signalbox admin provider update --sealed-credential-file`` seals on
the admin's side. The control plane stores and ships only ciphertext (its rows, its snapshots
and every admin listing are searched for the credential); a node of the group holding the key
opens it and sends it upstream; a node without the key, with another key, or of another group
marks the provider unavailable with a precise reason and keeps serving the rest; a sealed blob
moved onto another provider does not open. The control plane refuses a blob sealed to a group
that does not exist, has no key, or has another key, naming the field."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf import text_format

from dataplane.app import DataPlaneNode
from dataplane.config.model import Scope
from dataplane.providers.sealing import load_private_key
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.cli import main
from tests.controlplane.conftest import Admin
from tests.dataplane.providers.hostile import HostileUpstream
from tests.e2e.conftest import loopback_node
from tests.fixtures.postgres import RunningControlPlane, sql_rows

CREDENTIAL = "sk-sealed-credential-0f9e8d7c6b5a"


@pytest.fixture
async def upstream() -> AsyncIterator[HostileUpstream]:
    server = await HostileUpstream("openai_compatible").start()
    yield server
    await server.stop()


@pytest.fixture
async def nodes() -> AsyncIterator[list[DataPlaneNode]]:
    started: list[DataPlaneNode] = []
    yield started
    for node in reversed(started):
        await node.stop()


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
            err.write(str(exc.code))
    return code, out.getvalue(), err.getvalue()


async def _node(
    running: RunningControlPlane, name: str, group: str, private_tmp: Path, key: X25519PrivateKey | None
) -> DataPlaneNode:
    node = await loopback_node(running, name, private_tmp, scope=Scope(node_group=group), sealing_key=key)
    await node.start()
    return node


async def _infer(node: DataPlaneNode, api_key: str, model: str) -> tuple[grpc.StatusCode, str]:
    request = infer_pb2.InferRequest(model=model)
    request.messages.add(role=infer_pb2.ROLE_USER).content.add(text="hi")
    async with grpc.aio.insecure_channel(node.address) as channel:
        try:
            await infer_pb2_grpc.InferServiceStub(channel).Infer(
                request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_a_sealed_credential_opens_only_on_its_groups_nodes_and_never_on_the_control_plane(
    admin: Admin,
    control_plane: RunningControlPlane,
    upstream: HostileUpstream,
    nodes: list[DataPlaneNode],
    private_tmp: Path,
) -> None:
    work = Path(tempfile.mkdtemp(prefix="sealed-", dir=private_tmp))
    # The operator makes the group's key pair; the admin registers the public key.
    code, public_b64, err = await asyncio.to_thread(
        _run, "dataplane", "sealing-key", "generate", "--out", str(work / "vault.key")
    )
    assert code == 0, err
    vault_key = load_private_key((work / "vault.key").read_bytes(), "vault.key")
    target = ("--target", control_plane.address, "--token", control_plane.token)
    code, _, err = await asyncio.to_thread(
        _run, "admin", *target, "group", "create", "vault", "--sealing-public-key", public_b64.strip()
    )
    assert code == 0, err
    code, _, err = await asyncio.to_thread(
        _run, "admin", *target, "group", "update", "vault", "--sealing-public-key", "not-a-key"
    )
    assert code != 0
    assert "--sealing-public-key: must be base64 of a 32-byte X25519 public key" in err
    await control_plane.ensure_group("other")

    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    base_url = f"{upstream.base_url}/v1"
    for name in ("sealed", "evil"):
        await admin.CreateProvider(
            admin_pb2.CreateProviderRequest(
                provider=admin_pb2.Provider(name=name, type="openai_compatible", base_url=base_url)
            )
        )
    # Sealed on the admin's side, to the group's key, bound to the provider's id.
    (work / "credential").write_text(CREDENTIAL + "\n")
    code, _, err = await asyncio.to_thread(
        _run, "admin", *target, "provider", "update", "sealed", "--type", "openai_compatible",
        "--base-url", base_url, "--sealed-credential-file", str(work / "credential"), "--sealed-for-group", "vault",
    )  # fmt: skip
    assert code == 0, err
    listed = await admin.ListProviders(admin_pb2.ListProvidersRequest())
    sealed_provider = next(p for p in listed.providers if p.name == "sealed")
    assert sealed_provider.credential.sealed.node_group == "vault"
    # The same blob on another provider (one the admin points where they like): stored, but
    # it will not open there.
    evil = next(p for p in listed.providers if p.name == "evil")
    evil.credential.sealed.CopyFrom(sealed_provider.credential.sealed)
    await admin.UpdateProvider(admin_pb2.UpdateProviderRequest(provider=evil))
    for alias, provider in (("sealed-model", "sealed"), ("evil-model", "evil")):
        await admin.CreateModel(
            admin_pb2.CreateModelRequest(
                model=admin_pb2.Model(
                    alias=alias,
                    capabilities=[common_pb2.CAPABILITY_CHAT],
                    deployments=[admin_pb2.Deployment(provider=provider, upstream_model="ok")],
                )
            )
        )
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(
            tenant="acme",
            document="default_model: sealed-model\nallowed_models: [sealed-model, evil-model]\n"
            "retry: {max_attempts: 1, attempts_per_deployment: 1}\n",
        )
    )
    key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme"))

    holder = await _node(control_plane, "vault-1", "vault", private_tmp, vault_key)
    keyless = await _node(control_plane, "vault-2", "vault", private_tmp, None)
    wrong = await _node(control_plane, "vault-3", "vault", private_tmp, X25519PrivateKey.generate())
    stranger = await _node(control_plane, "other-1", "other", private_tmp, vault_key)
    nodes.extend((holder, keyless, wrong, stranger))
    for node, group in ((holder, "vault"), (keyless, "vault"), (wrong, "vault"), (stranger, "other")):
        info = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(group=group))
        await node.store.wait_for_version(int(info.version), timeout=15)

    # The group's node with the key: the credential reaches the upstream, and only there.
    assert await _infer(holder, key.secret, "sealed-model") == (grpc.StatusCode.OK, "")
    assert upstream.last.headers["authorization"] == f"Bearer {CREDENTIAL}"
    unusable = holder.store.require().unusable
    assert sealed_provider.id not in unusable
    assert "does not open with this node's sealing key" in unusable[evil.id]
    code, message = await _infer(holder, key.secret, "evil-model")
    assert code != grpc.StatusCode.OK
    assert CREDENTIAL not in message

    reasons = {
        keyless: "this node has no sealing key (--sealing-key)",
        wrong: "this node's sealing key is",
        stranger: "this node is in node group 'other'",
    }
    for node, reason in reasons.items():
        why = node.store.require().unusable[sealed_provider.id]
        assert reason in why, why
        assert CREDENTIAL not in why
        code, message = await _infer(node, key.secret, "sealed-model")
        # The node's usual answer for a provider whose credential it cannot use.
        assert code == grpc.StatusCode.FAILED_PRECONDITION, message
        assert message.startswith("provider credentials unavailable")
    assert [r.headers["authorization"] for r in upstream.requests] == [f"Bearer {CREDENTIAL}"]

    # The control plane cannot read it back: not in any row, snapshot or listing.
    leaks = [CREDENTIAL.encode(), base64.b64encode(CREDENTIAL.encode()), CREDENTIAL.encode().hex().encode()]
    tables = await asyncio.to_thread(
        sql_rows,
        control_plane.database_url,
        "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'",
    )
    for (table,) in tables:
        for (row,) in await asyncio.to_thread(
            sql_rows, control_plane.database_url, f"SELECT t::text FROM {table} t"
        ):
            assert not any(leak in str(row).encode() for leak in leaks), table
    texts = [
        text_format.MessageToString(await admin.ListProviders(admin_pb2.ListProvidersRequest())),
        text_format.MessageToString(await admin.ListNodeGroups(admin_pb2.ListNodeGroupsRequest())),
        (await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest(group="vault")))
        .SerializeToString()
        .hex(),
    ]
    code, out, _ = await asyncio.to_thread(_run, "admin", *target, "provider", "list")
    assert code == 0
    assert "sealed:vault(" in out
    texts.append(out)
    for text in texts:
        assert not any(leak.decode() in text for leak in leaks)


async def test_the_control_plane_refuses_a_sealed_credential_it_cannot_place(admin: Admin) -> None:
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    await admin.CreateNodeGroup(admin_pb2.CreateNodeGroupRequest(group=admin_pb2.NodeGroup(name="keyed")))
    await admin.UpdateNodeGroup(admin_pb2.UpdateNodeGroupRequest(name="keyed", sealing_public_key=public))
    await admin.CreateNodeGroup(admin_pb2.CreateNodeGroupRequest(group=admin_pb2.NodeGroup(name="bare")))
    group = await admin.GetNodeGroup(admin_pb2.GetNodeGroupRequest(name="keyed"))
    assert group.sealing_public_key == public
    blob = b"\x01" + bytes(32 + 12 + 16 + 8)
    cases = {
        "no such group": (
            snapshot_pb2.SealedSecret(node_group="ghost", key_id=group.sealing_key_id, ciphertext=blob),
            grpc.StatusCode.NOT_FOUND,
            "provider.credential.sealed.node_group",
        ),
        "group without a key": (
            snapshot_pb2.SealedSecret(node_group="bare", key_id=group.sealing_key_id, ciphertext=blob),
            grpc.StatusCode.INVALID_ARGUMENT,
            "provider.credential.sealed.node_group: node group 'bare' has no sealing key",
        ),
        "another key": (
            snapshot_pb2.SealedSecret(node_group="keyed", key_id="0" * 16, ciphertext=blob),
            grpc.StatusCode.INVALID_ARGUMENT,
            "provider.credential.sealed.key_id",
        ),
        "not a sealed blob": (
            snapshot_pb2.SealedSecret(
                node_group="keyed", key_id=group.sealing_key_id, ciphertext=b"sk-plain"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "provider.credential.sealed.ciphertext: is not a sealed credential",
        ),
        "oversized": (
            snapshot_pb2.SealedSecret(
                node_group="keyed", key_id=group.sealing_key_id, ciphertext=blob * 1000
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "provider.credential.sealed.ciphertext: must be at most",
        ),
    }
    for name, (sealed, status, message) in cases.items():
        provider = admin_pb2.Provider(
            name="p", type="openai_compatible", credential=snapshot_pb2.SecretRef(sealed=sealed)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.CreateProvider(admin_pb2.CreateProviderRequest(provider=provider))
        assert refused.value.code() == status, name
        assert (refused.value.details() or "").startswith(message), (name, refused.value.details())
    assert not (await admin.ListProviders(admin_pb2.ListProvidersRequest())).providers
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.UpdateNodeGroup(
            admin_pb2.UpdateNodeGroupRequest(name="keyed", sealing_public_key=b"short")
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sealing_public_key: must be a raw X25519 public key of 32 bytes, got 5" in str(
        refused.value.details()
    )
