"""Reading stored snapshots, re-issuing them, and dry-running routing against the newest one."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Snapshot
from controlplane.errors import InvalidArgument, NotFound
from controlplane.limits import DEFAULT_GROUP
from controlplane.repositories import config as config_repo
from controlplane.repositories import groups as group_repo
from controlplane.repositories import snapshots as repo
from controlplane.services.base import SYSTEM, UnitOfWork
from controlplane.snapshots.compiler import LatestCompiled
from controlplane.snapshots.history import Diff, decode, diff
from controlplane.snapshots.publish import Publication
from dataplane.config.model import RuntimeConfig, TenantConfig
from signalbox.api.config.v1 import snapshot_pb2

DEFAULT_PAGE = 20
MAX_PAGE = 1000


@dataclass(slots=True)
class SnapshotService:
    uow: UnitOfWork
    compiled: LatestCompiled = field(default_factory=LatestCompiled)
    """The ``default`` group's newest compiled config; seeded by ``remember`` after each commit."""
    group_compiled: dict[str, LatestCompiled] = field(default_factory=dict)
    """The same, for every other group dry runs were asked about or that published."""

    def _compiled(self, group: str) -> LatestCompiled:
        if group == DEFAULT_GROUP:
            return self.compiled
        return self.group_compiled.setdefault(group, LatestCompiled())

    async def get(self, version: int = 0, group: str = DEFAULT_GROUP) -> Snapshot:
        """A stored snapshot of ``group``; 0 for its newest."""
        async with self.uow.read() as session:
            row = await (repo.get(session, version, group) if version else repo.latest(session, group))
            if row is None:
                await _known(session, group)
        if row is None:
            raise NotFound("snapshot", _label(group, version))
        return row

    async def page(self, limit: int, before: int, group: str = DEFAULT_GROUP) -> tuple[list[Snapshot], int]:
        """Stored versions of ``group`` newest first (below ``before`` when set), and the
        ``before`` of the next page (0: none)."""
        if limit > MAX_PAGE:
            raise InvalidArgument("limit", f"at most {MAX_PAGE}")
        limit = limit or DEFAULT_PAGE
        async with self.uow.read() as session:
            rows = list(await repo.page(session, limit=limit + 1, before=before, group=group))
            if not rows:
                await _known(session, group)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1].version if more else 0)

    async def content(
        self, version: int, group: str = DEFAULT_GROUP
    ) -> tuple[Snapshot, snapshot_pb2.Snapshot, dict[str, str]]:
        """A stored snapshot, its decoded payload, and the prefixes of its keys that still exist."""
        row = await self.get(version, group)
        snapshot = decode(row.payload, row.version)
        async with self.uow.read() as session:
            prefixes = {str(k.id): k.prefix for k in await config_repo.list_api_keys(session)}
        return row, snapshot, prefixes

    async def diff(self, from_version: int, to_version: int, group: str = DEFAULT_GROUP) -> Diff:
        """What changed from one stored version of ``group`` to another (both must be given
        and stored)."""
        if not from_version:
            raise InvalidArgument("from_version", "must be a stored version (not 0)")
        if not to_version:
            raise InvalidArgument("to_version", "must be a stored version (not 0)")
        old, new = await self.get(from_version, group), await self.get(to_version, group)
        return diff(decode(old.payload, old.version), decode(new.payload, new.version))

    async def export(self, group: str = DEFAULT_GROUP) -> Snapshot:
        """The newest snapshot of ``group``, marked exported so retention keeps it."""
        async with self.uow.sessions() as session, session.begin():
            row = await repo.latest(session, group)
            if row is None:
                await _known(session, group)
                raise NotFound("snapshot", _label(group, 0))
            await repo.mark_exported(session, row.version, datetime.now(UTC), group)
        return row

    async def reissue_if_aging(self) -> int | None:
        """Publish the unchanged config as a new version of every group that has no snapshot
        yet, or whose newest has used half its lifetime, so nodes never drift into an expired
        one just because nobody changed anything. Returns the ``default`` group's newest
        version when anything was re-issued, else None."""
        async with self.uow.change(SYSTEM, "re-issued before expiry") as change:
            # Times only: every group's newest envelope is megabytes at fleet size, and this
            # runs every --reissue-check-interval on every replica.
            latest = await repo.heads(change.session)
            groups = [g.name for g in await group_repo.list_all(change.session)]
            now = await self.uow.publisher.now(change.session)
            missing = frozenset(g for g in groups if g not in latest)
            aging = frozenset(
                g for g in groups if g in latest and now >= latest[g].created_at + self.uow.publisher.ttl / 2
            )
            if not missing and not aging:
                change.skip()
                return None
            if not aging:
                change.reason = "initial snapshot"
            change.force = missing | aging
        return change.version

    def remember(self, publication: Publication) -> None:
        """An after-commit callback: the publisher compiled the new version already."""
        for group, published in publication.published.items():
            self._compiled(group).remember(published.version, published.sha256, published.config)

    async def runtime_for(
        self, tenant: str, group: str = DEFAULT_GROUP
    ) -> tuple[RuntimeConfig, TenantConfig]:
        """``group``'s newest snapshot compiled as its nodes would, and the tenant in it.

        The envelope (megabytes at fleet size) is read only when its version is not the one
        compiled already: ExplainRoute calls this per request."""
        async with self.uow.read() as session:
            head = await repo.head(session, group)
            if head is None:
                await _known(session, group)
            tenant_row = await config_repo.get_tenant(session, tenant)
        if head is None:
            raise NotFound("snapshot", _label(group, 0))
        compiled = self._compiled(group)
        config = compiled.held(*head.key)
        if config is None:
            row = await self.get(head.version, group)
            config = await compiled.get(row.version, bytes(row.sha256), bytes(row.payload))
        found = config.tenants.get(str(tenant_row.id)) if tenant_row is not None else None
        if found is None:
            raise NotFound("tenant", tenant)
        return config, found


def _label(group: str, version: int) -> str:
    what = str(version) if version else "latest"
    return what if group == DEFAULT_GROUP else f"{group}/{what}"


async def _known(session: AsyncSession, group: str) -> None:
    """``NotFound`` naming the group when it neither exists nor ever had a snapshot."""
    if await group_repo.get(session, group) is None and await repo.latest(session, group) is None:
        raise NotFound("node group", group, field="group")
