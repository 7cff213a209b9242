"""A tenant named in an evidence filter by its name, as the CLI's help and the docs show
(``--tenant acme``), selects the records of that tenant (which carry its id) for a platform
identity exactly as for the tenant's own admin: a query, a usage report or an Evidence Pack
never answers "nothing" for a tenant that has records because it was named, not numbered."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest

from dataplane.evidence import checkpoint
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.pack_verify import verify
from dataplane.identity import IdentityFiles
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.tls import ClientTls, aio_channel
from tests.controlplane.evidence.conftest import Stream, new_dir
from tests.controlplane.test_cli import _signalbox
from tests.fixtures.postgres import RunningControlPlane


async def _ship(
    plane: RunningControlPlane, private_tmp: Path, tenants: list[str], node_id: str = "node-a"
) -> None:
    """``node_id``: one record per entry of ``tenants`` (its tenant id), all under a checkpoint."""
    directory = new_dir(private_tmp, f"{node_id}-")
    tls = await plane.enroll(node_id, directory)
    path = log_path(directory, node_id)
    signer = IdentityFiles(directory).private_key()
    async with EvidenceLog(path, node_id, signer=signer, checkpoint_records=10**9) as log:
        for i, tenant_id in enumerate(tenants):
            log.append(
                {
                    "ts": time.time(),
                    "kind": "chat",
                    "correlation_id": f"corr-{i}",
                    "tenant_id": tenant_id,
                    "routing": {"served_by": {"model": "small"}},
                    "usage": {"input_tokens": 10, "output_tokens": 5},
                    "outcome": {"code": "OK"},
                }
            )
        assert await log.checkpoint()
    notes = [n.decode() for n in checkpoint.read_notes(checkpoint.checkpoints_path(path))]
    async with aio_channel(plane.node_address, tls) as channel:
        stream = Stream(channel)
        ack = await stream.ship(f"{node_id}/0", path.read_bytes().splitlines(keepends=True), notes)
        stream.close()
    assert (ack.head_seq, ack.error.code) == (len(tenants), ""), ack


@pytest.fixture
async def initech(control_plane: RunningControlPlane, private_tmp: Path) -> str:
    """Tenants initech (3 records) and hooli (2 records); initech's id."""
    async with aio_channel(control_plane.address, ClientTls()) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        ids = [
            (
                await admin.CreateTenant(
                    admin_pb2.CreateTenantRequest(name=name), metadata=control_plane.metadata
                )
            ).id
            for name in ("initech", "hooli")
        ]
    await _ship(control_plane, private_tmp, [ids[0], ids[1], ids[0], ids[1], ids[0]])
    return ids[0]


async def test_a_tenant_named_by_name_selects_its_records_in_queries_usage_and_packs(
    control_plane: RunningControlPlane, initech: str, private_tmp: Path
) -> None:
    async with aio_channel(control_plane.address, ClientTls()) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for ref in (initech, "initech"):
            found = await admin.QueryEvidence(
                admin_pb2.QueryEvidenceRequest(tenant_id=ref), metadata=control_plane.metadata
            )
            assert [(r.seq, r.tenant_id) for r in found.records] == [(5, initech), (3, initech), (1, initech)]
            usage = await admin.GetUsage(
                admin_pb2.GetUsageRequest(tenant_id=ref), metadata=control_plane.metadata
            )
            assert (usage.total.requests, usage.total.input_tokens) == (3, 30)
        # Neither a tenant's id nor its name: still a plain filter (a deleted tenant's records
        # keep its id), matching nothing here.
        nobody = await admin.QueryEvidence(
            admin_pb2.QueryEvidenceRequest(tenant_id="nobody"), metadata=control_plane.metadata
        )
        assert not nobody.records
        with pytest.raises(grpc.aio.AioRpcError):  # a bad request is still refused by name
            await admin.QueryEvidence(
                admin_pb2.QueryEvidenceRequest(tenant_id="initech", limit=5000),
                metadata=control_plane.metadata,
            )

    out = private_tmp / "initech.pack"
    code, stdout, err = await _signalbox(
        "admin", "--target", control_plane.address, "--token", control_plane.token,
        "evidence", "export", "--tenant", "initech", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert f"wrote {out}: 3 records" in stdout
    report = verify(out, {control_plane.key_id: control_plane.public_key})
    assert report.records == 3
    # The pack states the tenant it searched by the id its records carry.
    assert report.query == {"tenant_id": initech}

    code, stdout, err = await _signalbox(
        "admin", "--target", control_plane.address, "--token", control_plane.token,
        "--json", "usage", "--tenant", "initech",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["total"]["requests"] == "3"


async def test_a_tenants_pack_lists_only_the_chains_holding_its_records(
    control_plane: RunningControlPlane, initech: str, private_tmp: Path
) -> None:
    """A pack's manifest lists every chain searched, with its node, head seq, state and
    alarm. A tenant admin's pack listed every chain of the fleet: node-b, which never served
    initech, and how many records it holds. It lists the chains holding initech's records:
    no other can hold a match."""
    async with aio_channel(control_plane.address, ClientTls()) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        hooli = (
            await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="hooli"), metadata=control_plane.metadata)
        ).id
        token = (
            await admin.CreateAdminToken(
                admin_pb2.CreateAdminTokenRequest(name="initech-ops", role="tenant_admin", tenant="initech"),
                metadata=control_plane.metadata,
            )
        ).token
    await _ship(control_plane, private_tmp, [hooli, hooli], node_id="node-b")

    async def listed(token: str, out: Path) -> list[tuple[str, int]]:
        code, _, err = await _signalbox(
            "admin", "--target", control_plane.address, "--token", token,
            "evidence", "export", "--tenant", "initech", "--out", str(out),
        )  # fmt: skip
        assert code == 0, err
        assert verify(out, {control_plane.key_id: control_plane.public_key}).records == 3
        manifest = json.loads((await asyncio.to_thread(out.read_bytes)).splitlines()[-1])["manifest"]
        return sorted(
            (c["chain_id"], c["records"]) for c in manifest["chains"] + manifest["searched_without_match"]
        )

    assert await listed(control_plane.token, private_tmp / "platform.pack") == [
        ("node-a/0", 3),
        ("node-b/0", 0),
    ]
    assert await listed(token, private_tmp / "tenant.pack") == [("node-a/0", 3)]
