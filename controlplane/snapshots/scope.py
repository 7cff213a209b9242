"""What one node group sees: a pure function from the full snapshot to the group's.

The full snapshot is built once per change (``build.build_snapshot``); every group's
snapshot is cut from it here, so scoping never reads the database and cannot drift
from what the full snapshot says.

Providers are dropped with the data plane's own rule (``deployment_drop``, with a
policy as permissive as a policy can be): only what a node of that mode and site could
never call leaves the snapshot. An air-gapped group keeps the providers of its own
site alone; an on-prem group keeps everything (a policy may allow egress); a cloud
group keeps everything. The group's own lists then narrow that further.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataplane.config.model import Constraints, DeploymentMode, ProviderConfig
from dataplane.routing.query import NodeContext
from dataplane.routing.table import deployment_drop
from dataplane.snapshot.compile import LOCATION_FROM_PROTO
from signalbox.api.config.v1 import snapshot_pb2

_ANY_POLICY = Constraints(allow_egress=True, certification_required_from=None)
"""The most a policy can allow: what this still drops, no node of the group could use."""


@dataclass(frozen=True, slots=True)
class GroupView:
    """A node group as scoping needs it."""

    name: str
    mode: DeploymentMode = DeploymentMode.CLOUD
    site: str = ""
    """The group's site: an air-gapped group sees only providers of this site."""
    deployment: str = ""
    """The deployment label written into the snapshot's scope."""
    tenants: frozenset[str] | None = None
    """Tenant ids or names the group sees; ``None``: all."""
    providers: frozenset[str] | None = None
    """Provider ids or names; ``None``: all (that the site may reach)."""
    models: frozenset[str] | None = None
    """Model ids or aliases; ``None``: all."""

    @property
    def scope(self) -> snapshot_pb2.Scope:
        return snapshot_pb2.Scope(deployment=self.deployment, node_group=self.name, site=self.site)


def _listed(allowed: frozenset[str] | None, *keys: str) -> bool:
    return allowed is None or any(k in allowed for k in keys)


def reachable(provider: snapshot_pb2.Provider, group: GroupView) -> bool:
    """Whether a node of ``group`` could ever dispatch to ``provider`` (the routing rule)."""
    config = ProviderConfig(
        id=provider.id,
        name=provider.name,
        type=provider.type,
        base_url="",
        location=LOCATION_FROM_PROTO.get(provider.location, LOCATION_FROM_PROTO[0]),
        site=provider.site,
    )
    node = NodeContext(mode=group.mode, site=group.site, deployment=group.deployment, node_group=group.name)
    return not deployment_drop(config, _ANY_POLICY, node)


def scope_snapshot(full: snapshot_pb2.Snapshot, group: GroupView) -> snapshot_pb2.Snapshot:
    """``full`` cut down to what ``group`` may see, with the group's scope.

    Version, times, previous hash and trusted keys are copied unchanged (the publisher
    sets the first four per group). Keys and policies follow their tenant (the platform
    default policy is in every group); a model keeps its deployments on kept providers and
    is dropped when it had deployments and none is left. A policy naming a model the
    group does not see is left in: the data plane's compiler refuses it, so the change
    that caused it is refused, naming the group and the policy.
    """
    tenants = [t for t in full.tenants if _listed(group.tenants, t.id, t.name)]
    tenant_ids = {t.id for t in tenants}
    providers = [p for p in full.providers if _listed(group.providers, p.id, p.name) and reachable(p, group)]
    provider_ids = {p.id for p in providers}
    models = []
    for m in full.models:
        if not _listed(group.models, m.id, m.alias):
            continue
        kept = [d for d in m.deployments if d.provider_id in provider_ids]
        if m.deployments and not kept:
            continue
        if len(kept) != len(m.deployments):
            trimmed = snapshot_pb2.Model()
            trimmed.CopyFrom(m)
            del trimmed.deployments[:]
            trimmed.deployments.extend(kept)
            m = trimmed
        models.append(m)
    scoped = snapshot_pb2.Snapshot(
        version=full.version,
        previous_hash=full.previous_hash,
        scope=group.scope,
        tenants=tenants,
        api_keys=[k for k in full.api_keys if k.tenant_id in tenant_ids],
        providers=providers,
        models=models,
        policies=[p for p in full.policies if not p.tenant_id or p.tenant_id in tenant_ids],
        trusted_keys=full.trusted_keys,
    )
    # Copied only when set: an empty timestamp would still be written (and counted as config).
    for name in ("created_at", "expires_at"):
        if full.HasField(name):
            getattr(scoped, name).CopyFrom(getattr(full, name))
    return scoped


def describe(snapshot: snapshot_pb2.Snapshot, path: str) -> str:
    """Name the entry of ``snapshot`` at a compiler path, in the admin's terms."""
    for prefix, items in (("$.policies[", snapshot.policies), ("$.models[", snapshot.models)):
        if not path.startswith(prefix):
            continue
        index_text = path[len(prefix) :].split("]", 1)[0]
        if not index_text.isdigit() or int(index_text) >= len(items):
            return path
        item = items[int(index_text)]
        if isinstance(item, snapshot_pb2.Model):
            return f"model {item.alias!r}"
        if not item.tenant_id:
            return f"the platform default policy (version {item.version})"
        names = {t.id: t.name for t in snapshot.tenants}
        return f"the policy of tenant {names.get(item.tenant_id, item.tenant_id)!r} (version {item.version})"
    return path
