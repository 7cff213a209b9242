"""A real data-plane node syncing from a real control plane runs the governance profiles an
admin applies: the tenant's own, else the platform default, each at the version applied."""

from __future__ import annotations

from pathlib import Path

from dataplane.app import DataPlaneNode
from dataplane.config.model import Action, DataClass, RuntimeConfig
from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import loopback_node
from tests.fixtures.postgres import RunningControlPlane

OWN = """
input:
  rules:
    - {name: ibans, detector: iban, action: classify, data_class: confidential}
"""
DEFAULT = '{"input": {"rules": [{"name": "emails", "detector": "email", "action": "redact"}]}}'


async def _applied(node: DataPlaneNode, version: int) -> RuntimeConfig:
    """The config the node serves once it has applied ``version``."""
    return (await node.wait_for_version(version, 15)).config


async def test_a_node_runs_the_profiles_it_synced(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    await admin.seed("acme")
    other = await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="other", tier="gold"))
    acme = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))
    node = await loopback_node(control_plane, "gov-node-1", private_tmp)
    await node.start()
    try:
        own = await admin.ApplyGovernanceProfile(
            admin_pb2.ApplyGovernanceProfileRequest(tenant="acme", document=OWN)
        )
        config = await _applied(node, own.snapshot_version)
        profile = config.governance_for(acme.id)
        assert profile is not None
        assert (profile.version, [(r.name, r.action, r.data_class) for r in profile.input_rules]) == (
            1,
            [("ibans", Action.CLASSIFY, DataClass.CONFIDENTIAL)],
        )
        # No platform default yet: a tenant without a profile is not governed.
        assert config.governance_for(other.id) is None

        default = await admin.ApplyGovernanceProfile(
            admin_pb2.ApplyGovernanceProfileRequest(document=DEFAULT)
        )
        config = await _applied(node, default.snapshot_version)
        fallback = config.governance_for(other.id)
        assert fallback is not None
        assert [r.name for r in fallback.input_rules] == ["emails"]

        # Deleting acme's own profile hands it to the platform default on the node too.
        deleted = await admin.DeleteGovernanceProfile(admin_pb2.DeleteGovernanceProfileRequest(tenant="acme"))
        config = await _applied(node, deleted.snapshot_version)
        now = config.governance_for(acme.id)
        assert now is not None
        assert [r.name for r in now.input_rules] == ["emails"]
    finally:
        await node.stop()
