"""ExplainRoute's route tables are bounded across every node group, not per group: the
sites and deployments a caller names and the number of groups cannot grow them."""

from __future__ import annotations

import pytest

from controlplane.api.admin_routing import RouteTables
from controlplane.snapshots.compiler import compile_in_thread
from dataplane.routing.query import NodeContext
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually


async def test_route_tables_are_bounded_across_groups(
    admin: Admin, control_plane: RunningControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    await admin.seed()
    version = await admin.latest_version()
    broker = control_plane.cp.broker
    assert broker is not None
    latest = await eventually(
        lambda: (held := broker.latest_for("default")) is not None and held.version == version and held,
        message="the newest snapshot loaded",
    )
    config = await compile_in_thread(latest.envelope.payload)
    (tenant_id,) = config.tenants
    monkeypatch.setattr(RouteTables, "MAX_TABLES", 4, raising=False)
    tables = RouteTables()

    def context(group: str, site: str) -> NodeContext:
        return NodeContext(site=site, node_group=group)

    first = tables.get("default", config, context("default", "s0"), tenant_id)
    assert tables.get("default", config, context("default", "s0"), tenant_id) is first  # held
    # Three groups of three sites each: nine tables asked for, each under the old per-group cap.
    for group in ("default", "g1", "g2"):
        for site in ("s0", "s1", "s2"):
            tables.get(group, config, context(group, site), tenant_id)
    still_held = tables.get("default", config, context("default", "s0"), tenant_id) is first
    assert not still_held, "the least recently asked table stays held beyond the cap"
    assert len(tables) == 4
    assert set(tables._configs) == {"default", "g2"}, "a group without tables keeps no config"
