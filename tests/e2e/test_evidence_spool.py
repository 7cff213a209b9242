"""The bounded spool with per-tenant policies on a real node: with the control plane stopped
the spool passes its bound; the ``refuse`` tenant gets UNAVAILABLE naming the rule (and each
refusal has its record), the ``serve_and_alarm`` tenant keeps being served and the node
alarms; once the control plane is back and shipping drains the spool, refusals stop. Nothing
is lost or stored twice (counted by (chain, seq))."""

from __future__ import annotations

import json
import logging
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest

from dataplane.app import DataPlaneNode
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.shell.simulator import Simulator
from tests.e2e.conftest import loopback_node
from tests.e2e.test_config_push import _admin, _converged, _infer, _seed
from tests.e2e.test_controlplane_killed import _free_port
from tests.fixtures.postgres import cp_settings, running_control_plane, sql_rows
from tests.helpers import eventually

NODE = "spool-1"
BOUND = 6000


async def _refused(node: DataPlaneNode, api_key: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _infer(node, api_key)
    return info.value


async def test_the_spool_bound_applies_each_tenants_policy_and_loses_nothing(
    database_url: str, private_tmp: Path, simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="signalbox.dataplane.evidence.spool")
    listen, node_listen = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    settings = cp_settings(database_url, private_tmp, listen=listen, node_listen=node_listen)

    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_control_plane(settings))
        async with _admin(first) as admin:
            serving_key = await _seed(admin, simulator)  # tenant acme: serve_and_alarm (the default)
            strict = await admin.CreateTenant(
                admin_pb2.CreateTenantRequest(
                    name="strict", evidence_spool_full=snapshot_pb2.SPOOL_FULL_REFUSE
                )
            )
            await admin.ApplyPolicy(
                admin_pb2.ApplyPolicyRequest(tenant="strict", document="default_model: small")
            )
            strict_key = str(
                (await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="strict"))).secret
            )
            node = await loopback_node(
                first, NODE, private_tmp, evidence_spool_max_bytes=BOUND, evidence_segment_bytes=4096
            )
            await node.start()
            stack.push_async_callback(node.stop)
            await _converged(admin, NODE)
        assert node.shipper is not None
        shipper = node.shipper

        await _infer(node, strict_key)  # below the bound: served
        await _infer(node, serving_key)

        await first.cp.stop()
        served_while_full = 0
        while not node.spool.over:
            await _infer(node, serving_key)
        for _ in range(3):
            await _infer(node, serving_key)  # serve_and_alarm: still served
            served_while_full += 1
        refusals = [await _refused(node, strict_key) for _ in range(3)]
        assert {e.code() for e in refusals} == {grpc.StatusCode.UNAVAILABLE}
        assert all(
            (e.details() or "").startswith("evidence spool full (tenant policy refuse)") for e in refusals
        )
        refusal_ids = [dict(e.trailing_metadata() or ())["signalbox-evidence-id"] for e in refusals]
        status = node.spool.status()
        assert status["over"] is True
        assert status["refusals"] == 3
        assert status["alarms"] == 1  # once a minute, not once a request
        assert status["bytes"] > BOUND
        alarms = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evidence spool full:")]
        assert len(alarms) == 1
        assert f"(bound {BOUND})" in alarms[0]
        assert served_while_full == 3

        async with running_control_plane(settings):
            await eventually(
                lambda: shipper.status.shipped_seq == node.evidence.head.seq, timeout=30, message="drained"
            )
            await eventually(lambda: not node.spool.over, message="the spool below its bound")
            served = await _infer(node, strict_key)  # refusals stopped
            assert served.evidence_id
            await eventually(
                lambda: shipper.status.shipped_seq == node.evidence.head.seq,
                timeout=30,
                message="all shipped",
            )
            head = node.evidence.head.seq
            stored = sql_rows(
                database_url, "SELECT count(*), count(DISTINCT (chain_id, seq)) FROM evidence_records"
            )[0]
            ids = ", ".join(f"'{rid}'" for rid in refusal_ids)
            refused_rows = sql_rows(
                database_url,
                f"SELECT record_id, tenant_id, outcome, body FROM evidence_records WHERE record_id IN ({ids})",
            )

    assert (stored[0], stored[1]) == (head, head)  # none lost, none twice
    # Each refusal has its record (shipped, so read from the store: the node pruned it).
    assert len(refused_rows) == 3
    for _, tenant_id, outcome, body in refused_rows:
        assert (tenant_id, outcome) == (strict.id, "UNAVAILABLE")
        assert json.loads(bytes(body))["outcome"]["message"] == "evidence spool full (tenant policy refuse)"
