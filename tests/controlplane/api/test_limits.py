"""Limits through the Admin API and `signalbox admin limits`: stored, carried in the signed
snapshot (Tenant field 8, ApiKey field 10), read back with what was spent, and bad input
refused naming the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import quota_pb2, snapshot_pb2
from tests.controlplane.api.test_admin import _code
from tests.controlplane.conftest import Admin
from tests.controlplane.test_cli import _signalbox
from tests.fixtures.postgres import RunningControlPlane


async def _snapshot(admin: Admin) -> snapshot_pb2.Snapshot:
    envelope = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    return snapshot_pb2.Snapshot.FromString(envelope.payload)


async def test_limits_are_set_merged_carried_in_the_snapshot_and_cleared(admin: Admin) -> None:
    await admin.seed()
    key = (await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="k"))).key
    info = await admin.SetLimits(
        admin_pb2.SetLimitsRequest(
            tenant="acme",
            requests_per_minute=600,
            budget_day_nanos=5_000_000_000,
            on_unreachable=snapshot_pb2.ON_UNREACHABLE_FAIL_CLOSED,
        )
    )
    assert info.snapshot_version > 0
    # Only the fields given change.
    info = await admin.SetLimits(admin_pb2.SetLimitsRequest(tenant="acme", tokens_per_minute=9000))
    assert (info.limits.requests_per_minute, info.limits.tokens_per_minute) == (600, 9000)
    assert info.limits.on_unreachable == snapshot_pb2.ON_UNREACHABLE_FAIL_CLOSED
    await admin.SetLimits(admin_pb2.SetLimitsRequest(tenant="acme", key_id=key.id, requests_per_minute=60))

    snapshot = await _snapshot(admin)
    tenant = next(t for t in snapshot.tenants if t.name == "acme")
    assert tenant.limits == snapshot_pb2.Limits(
        requests_per_minute=600,
        tokens_per_minute=9000,
        budget_day_nanos=5_000_000_000,
        on_unreachable=snapshot_pb2.ON_UNREACHABLE_FAIL_CLOSED,
    )
    assert next(k for k in snapshot.api_keys if k.id == key.id).limits.requests_per_minute == 60
    got = await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant=tenant.id))
    assert (got.tenant, got.spent_day_nanos, got.snapshot_version) == ("acme", 0, 0)
    assert (await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))).limits.tokens_per_minute == 9000

    await admin.ClearLimits(admin_pb2.ClearLimitsRequest(tenant="acme"))
    await admin.ClearLimits(admin_pb2.ClearLimitsRequest(tenant="acme", key_id=key.id))
    snapshot = await _snapshot(admin)
    assert not any(t.HasField("limits") for t in snapshot.tenants)
    assert not any(k.HasField("limits") for k in snapshot.api_keys)


@pytest.mark.parametrize(
    ("request_fields", "code", "message"),
    [
        ({"tenant": ""}, grpc.StatusCode.INVALID_ARGUMENT, "tenant: must not be empty"),
        ({"tenant": "nobody"}, grpc.StatusCode.NOT_FOUND, "tenant: tenant 'nobody' not found"),
        ({"tenant": "acme", "key_id": "nope"}, grpc.StatusCode.NOT_FOUND, "key_id: api key 'nope' not found"),
        (
            {"tenant": "acme", "requests_per_minute": 2**63},
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests_per_minute",
        ),
        (
            {"tenant": "acme", "on_unreachable": 7},
            grpc.StatusCode.INVALID_ARGUMENT,
            "on_unreachable: 7 is not",
        ),
    ],
)
async def test_bad_limits_are_refused_naming_the_field(
    admin: Admin, request_fields: dict[str, object], code: grpc.StatusCode, message: str
) -> None:
    await admin.seed()
    got_code, got_message = await _code(admin.SetLimits(admin_pb2.SetLimitsRequest(**request_fields)))  # type: ignore[arg-type]
    assert got_code == code
    assert message in got_message, got_message


async def test_another_tenants_key_and_a_keys_on_unreachable_are_refused(admin: Admin) -> None:
    await admin.seed()
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="other"))
    theirs = (await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="other"))).key
    code, message = await _code(
        admin.SetLimits(admin_pb2.SetLimitsRequest(tenant="acme", key_id=theirs.id, requests_per_minute=1))
    )
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, f"key_id: api key '{theirs.id}' not found")
    code, message = await _code(
        admin.SetLimits(
            admin_pb2.SetLimitsRequest(
                tenant="other", key_id=theirs.id, on_unreachable=snapshot_pb2.ON_UNREACHABLE_FAIL_CLOSED
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("on_unreachable: is a tenant's setting")


async def test_admin_limits_commands(control_plane: RunningControlPlane, admin: Admin) -> None:
    env = {"SIGNALBOX_ADMIN_TARGET": control_plane.address, "SIGNALBOX_ADMIN_TOKEN": control_plane.token}
    await admin.seed()
    code, out, err = await _signalbox(
        "admin", "--json", "limits", "set", "--tenant", "acme", "--requests-per-minute", "600",
        "--budget-day", "12.5", "--on-unreachable", "fail_closed", env=env,
    )  # fmt: skip
    assert code == 0, err
    shown = json.loads(out)
    assert shown["limits"] == {
        "requests_per_minute": "600",
        "budget_day_nanos": "12500000000",
        "on_unreachable": "ON_UNREACHABLE_FAIL_CLOSED",
    }
    code, out, err = await _signalbox("admin", "limits", "get", "--tenant", "acme", env=env)
    assert code == 0, err
    header, row = out.strip().splitlines()
    assert "REQUESTS/MIN" in header
    assert row.split()[:7] == ["acme", "-", "600", "-", "$12.5", "-", "fail_closed"]
    for bad, problem in (
        ("--budget-day", "-1"),
        ("--budget-day", "0.0000000001"),
        ("--requests-per-minute", "x"),
    ):
        code, _, err = await _signalbox("admin", "limits", "set", "--tenant", "acme", bad, problem, env=env)
        assert code == 2
        assert bad in err
    code, _, err = await _signalbox("admin", "limits", "clear", "--tenant", "acme", env=env)
    assert code == 0, err
    assert (await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="acme"))).limits == snapshot_pb2.Limits()


async def test_spent_is_shown_for_the_ledgers_window_whatever_the_hosts_clock(
    admin: Admin, control_plane: RunningControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """`limits get` took the current day and month from the control-plane host's clock, the
    ledger from the database's: a host a day ahead showed tomorrow's spend (nothing) while
    the nodes were refused for today's."""
    tenant = await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    await admin.SetLimits(
        admin_pb2.SetLimitsRequest(tenant="acme", budget_day_nanos=1000, budget_month_nanos=5000)
    )
    ledger, limits = control_plane.cp.quota, control_plane.cp.limits
    assert ledger is not None
    assert limits is not None
    asks = [
        quota_pb2.QuotaAsk(scope=quota_pb2.QuotaScope(tenant_id=tenant.id, kind=kind), want=700)
        for kind in (quota_pb2.QUOTA_KIND_BUDGET_DAY, quota_pb2.QUOTA_KIND_BUDGET_MONTH)
    ]
    assert [g.granted for g in await ledger.lease(asks)] == [700, 700]
    limits.host_clock = lambda: datetime.now(UTC) + timedelta(days=1)
    info = await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="acme"))
    assert (info.spent_day_nanos, info.spent_month_nanos) == (700, 700)
    assert "this host's clock is +86400 s off the database's; budget windows are dated" in caplog.text
