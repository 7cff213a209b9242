"""Node groups: where nodes run and what they may see.

Every write is a config change: it publishes a new version for each group whose
content changed (a new group gets its first version; a group whose view did not
change gets none), and is refused whole when any group's snapshot would not compile.
The lists are stored as ids, so renaming a tenant, provider or model keeps it in the
groups that list it; callers may name entries by id or by name (alias for models).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import NodeGroup
from controlplane.errors import AlreadyExists, GroupInUse, InvalidArgument, NotFound, shown
from controlplane.limits import DEFAULT_GROUP, GROUP_NAME_CHARS
from controlplane.repositories import config as config_repo
from controlplane.repositories import groups as repo
from controlplane.repositories import snapshots as snapshot_repo
from controlplane.services.base import NAME_RE, SYSTEM, Caller, UnitOfWork
from dataplane.config.model import DeploymentMode
from dataplane.providers.sealing import KEY_BYTES as SEALING_KEY_BYTES

GROUP_NAME_RE = re.compile(rf"[a-z0-9-]{{1,{GROUP_NAME_CHARS}}}")
KINDS = ("tenants", "providers", "models")
SHOWN_NODES = 5
"""At most this many node ids are named when a delete is refused."""


def check_group_name(field_name: str, value: str) -> str:
    if not GROUP_NAME_RE.fullmatch(value):
        raise InvalidArgument(
            field_name, f"must be 1..{GROUP_NAME_CHARS} characters of a-z, 0-9 and '-' (got {shown(value)})"
        )
    return value


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A group as an admin writes it. ``None`` for a list: everything."""

    name: str
    mode: DeploymentMode = DeploymentMode.CLOUD
    site: str = ""
    deployment: str = ""
    tenants: tuple[str, ...] | None = None
    providers: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    sealing_public_key: bytes | None = None
    """The X25519 public key credentials are sealed to for the group's nodes."""


@dataclass(frozen=True, slots=True)
class GroupChange:
    """An update: only the fields that are not ``UNCHANGED`` change."""

    mode: DeploymentMode | None = None
    site: str | None = None
    deployment: str | None = None
    lists: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    """Kind ("tenants", "providers", "models") to its new list (``None``: everything)."""
    sealing_public_key: bytes | None = None
    """A new sealing public key; None: unchanged."""


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A group as an admin reads it: lists by name, its newest version, its nodes."""

    row: NodeGroup
    names: dict[str, tuple[str, ...] | None]
    snapshot_version: int
    nodes: int


async def _resolve(session: AsyncSession, kind: str, refs: tuple[str, ...], path: str) -> list[str]:
    """The ids of ``refs`` (ids or names), each one existing, none twice."""
    lookup = {
        "tenants": (config_repo.get_tenant, "tenant"),
        "providers": (config_repo.get_provider, "provider"),
        "models": (config_repo.get_model, "model"),
    }[kind]
    if not refs:
        raise InvalidArgument(path, "must name at least one (or select all)")
    ids: list[str] = []
    for i, ref in enumerate(refs):
        row = await lookup[0](session, ref) if ref else None
        if row is None:
            raise NotFound(lookup[1], ref, field=f"{path}[{i}]")
        if str(row.id) in ids:
            raise InvalidArgument(f"{path}[{i}]", f"{lookup[1]} {shown(ref)} is listed twice")
        ids.append(str(row.id))
    return ids


def _check_place(field_name: str, value: str) -> str:
    if value and not NAME_RE.fullmatch(value):
        raise InvalidArgument(
            field_name, "must start with a letter or digit and use only letters, digits, '.', '_', ':', '-'"
        )
    return value


def _check_mode_site(mode: DeploymentMode, site: str, path: str) -> None:
    if mode is DeploymentMode.AIR_GAPPED and not site:
        raise InvalidArgument(
            f"{path}.site", "required for an air-gapped group (its nodes call only that site)"
        )


def _check_sealing_key(field_name: str, key: bytes | None) -> None:
    if key is not None and len(key) != SEALING_KEY_BYTES:
        raise InvalidArgument(
            field_name, f"must be a raw X25519 public key of {SEALING_KEY_BYTES} bytes, got {len(key)}"
        )


@dataclass(slots=True)
class NodeGroupService:
    uow: UnitOfWork
    stale_after: float = 60.0
    """``--node-stale-after``: a node not seen for longer is not connected (``delete``)."""

    async def create(self, caller: Caller, spec: GroupSpec) -> tuple[GroupInfo, int]:
        """Create a group and publish its first snapshot; returns it and that version."""
        check_group_name("group.name", spec.name)
        _check_place("group.site", spec.site)
        _check_place("group.deployment", spec.deployment)
        _check_mode_site(spec.mode, spec.site, "group")
        _check_sealing_key("group.sealing_public_key", spec.sealing_public_key)
        async with self.uow.change(caller, f"create node group {spec.name}") as change:
            session = change.session
            if await repo.get(session, spec.name) is not None:
                raise AlreadyExists("node group", spec.name)
            row = NodeGroup(
                name=spec.name,
                mode=spec.mode.value,
                site=spec.site,
                deployment=spec.deployment,
                sealing_public_key=spec.sealing_public_key,
            )
            for kind in KINDS:
                refs = getattr(spec, kind)
                setattr(
                    row,
                    kind,
                    None if refs is None else await _resolve(session, kind, refs, f"group.{kind}.names"),
                )
            session.add(row)
        return await self.get(spec.name), change.group_version(spec.name)

    async def update(self, caller: Caller, name: str, update: GroupChange) -> tuple[GroupInfo, int]:
        """Change a group; publishes a new version of every group whose content changed.
        Returns the group and its newest version."""
        if update.site is not None:
            _check_place("site", update.site)
        if update.deployment is not None:
            _check_place("deployment", update.deployment)
        _check_sealing_key("sealing_public_key", update.sealing_public_key)
        async with self.uow.change(caller, f"update node group {name}") as change:
            session = change.session
            row = await repo.get(session, name, for_update=True)
            if row is None:
                raise NotFound("node group", name, field="name")
            if update.mode is not None:
                row.mode = update.mode.value
            if update.site is not None:
                row.site = update.site
            if update.deployment is not None:
                row.deployment = update.deployment
            if update.sealing_public_key is not None:
                row.sealing_public_key = update.sealing_public_key
            _check_mode_site(DeploymentMode(row.mode), row.site, "group")
            for kind, refs in update.lists.items():
                setattr(
                    row, kind, None if refs is None else await _resolve(session, kind, refs, f"{kind}.names")
                )
        return await self.get(name), change.group_version(name)

    async def delete(self, caller: Caller, name: str) -> int:
        """Delete a group no connected node runs. Its stored history stays readable (and a
        group re-created under the name continues its version chain)."""
        if name == DEFAULT_GROUP:
            raise InvalidArgument(
                "name", "the default group cannot be deleted: nodes that name no group run it"
            )
        async with self.uow.change(caller, f"delete node group {name}") as change:
            row = await repo.get(change.session, name, for_update=True)
            if row is None:
                raise NotFound("node group", name, field="name")
            running = await repo.connected_nodes(change.session, name, self.stale_after)
            if running:
                listed = ", ".join(running[:SHOWN_NODES]) + (", ..." if len(running) > SHOWN_NODES else "")
                raise GroupInUse(
                    f"node group {shown(name)} is still run by {len(running)} connected node(s): {listed}; "
                    "stop them or move them to another group first"
                )
            await change.session.delete(row)
        return change.version

    async def seed_default(self, *, deployment: str, site: str) -> None:
        """Write the control plane's ``--scope-deployment``/``--scope-site`` into the
        ``default`` group (publishing only when that changes it)."""
        _check_place("--scope-deployment", deployment)
        _check_place("--scope-site", site)
        async with self.uow.change(SYSTEM, "default group scope from --scope-* flags") as change:
            row = await repo.get(change.session, DEFAULT_GROUP, for_update=True)
            if row is None:
                raise NotFound("node group", DEFAULT_GROUP)
            if (row.deployment, row.site) == (deployment, site):
                change.skip()
                return
            row.deployment, row.site = deployment, site

    async def get(self, name: str) -> GroupInfo:
        async with self.uow.read() as session:
            row = await repo.get(session, name)
            if row is None:
                raise NotFound("node group", name, field="name")
            return (await self._infos(session, [row]))[0]

    async def row(self, name: str) -> NodeGroup:
        """The group itself, without what ``get`` adds for display (every tenant's, provider's
        and model's name, the fleet's node counts): one query, whatever the fleet's size."""
        async with self.uow.read() as session:
            row = await repo.get(session, name)
        if row is None:
            raise NotFound("node group", name, field="name")
        return row

    async def list(self) -> Sequence[GroupInfo]:
        async with self.uow.read() as session:
            return await self._infos(session, await repo.list_all(session))

    async def _infos(self, session: AsyncSession, rows: Sequence[NodeGroup]) -> Sequence[GroupInfo]:
        names = {
            "tenants": {str(t.id): t.name for t in await config_repo.list_tenants(session)},
            "providers": {str(p.id): p.name for p in await config_repo.list_providers(session)},
            "models": {str(m.id): m.alias for m in await config_repo.list_models(session)},
        }
        newest = await snapshot_repo.newest_versions(session)
        counts = await repo.node_counts(session)
        out = []
        for row in rows:
            lists: dict[str, tuple[str, ...] | None] = {}
            for kind in KINDS:
                ids = getattr(row, kind)
                # An id whose object was deleted since is shown as the id.
                lists[kind] = None if ids is None else tuple(names[kind].get(i, i) for i in ids)
            out.append(GroupInfo(row, lists, newest.get(row.name, 0), counts.get(row.name, 0)))
        return out
