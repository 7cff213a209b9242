"""The unit of work shared by the services."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.errors import ConfigRejected, InvalidArgument
from controlplane.limits import NAME_CHARS
from controlplane.repositories import config as repo
from controlplane.repositories.config import lock_config
from controlplane.snapshots.publish import Publication, SnapshotPublisher

_POLICY_PATH = re.compile(r"^\$\.policies\[(\d+)\]")
_MODEL_PATH = re.compile(r"^\$\.models\[(\d+)\]")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


def check_name(field_name: str, value: str) -> str:
    """Names are identifiers in configs and CLIs: short, no spaces, no surprises."""
    if not value:
        raise InvalidArgument(field_name, "must not be empty")
    if len(value) > NAME_CHARS:
        raise InvalidArgument(field_name, f"at most {NAME_CHARS} characters")
    if not NAME_RE.fullmatch(value):
        raise InvalidArgument(
            field_name, "must start with a letter or digit and use only letters, digits, '.', '_', ':', '-'"
        )
    return value


def check_str_map(field_name: str, value: dict[str, str]) -> dict[str, str]:
    for key in value:
        if not key:
            raise InvalidArgument(field_name, "keys must not be empty")
    return dict(value)


async def describe_path(session: AsyncSession, path: str) -> str:
    """Name the config entry at a snapshot path, in the admin's terms."""
    if match := _POLICY_PATH.match(path):
        policies = await repo.current_policies(session)
        index = int(match.group(1))
        if index < len(policies):
            policy = policies[index]
            if policy.tenant_id is None:
                return f"the platform default policy (version {policy.version})"
            tenant = await repo.get_tenant(session, str(policy.tenant_id))
            name = tenant.name if tenant is not None else str(policy.tenant_id)
            return f"the policy of tenant {name!r} (version {policy.version})"
    if match := _MODEL_PATH.match(path):
        models = await repo.list_models(session)
        index = int(match.group(1))
        if index < len(models):
            return f"model {models[index].alias!r}"
    return path


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is making an admin call (from the admin token)."""

    token_id: str
    name: str
    role: str = "admin"

    @property
    def actor(self) -> str:
        return f"admin:{self.name}"


SYSTEM = Caller("", "system")


@dataclass(slots=True)
class Change:
    """An open config change: its session, then the snapshot that carries it.

    Inside the block, ``reason`` may be refined, and ``skip()`` ends the change
    without a new snapshot (when, under the lock, there turns out to be nothing to do).
    """

    session: AsyncSession
    reason: str
    snapshot: Publication | None = None
    skipped: bool = False
    force: frozenset[str] | None = frozenset()
    """Groups that get a new version even when their content did not change
    (``None``: every group), e.g. a re-issue before expiry."""

    def skip(self) -> None:
        """Publish nothing: the block changed nothing that needs a new snapshot."""
        self.skipped = True

    @property
    def version(self) -> int:
        """The ``default`` group's newest version once the change is published."""
        assert self.snapshot is not None, "the snapshot is known once the change block ends"
        return self.snapshot.version

    def group_version(self, group: str) -> int:
        """``group``'s newest version once the change is published (0: it has none)."""
        assert self.snapshot is not None, "the snapshot is known once the change block ends"
        return self.snapshot.newest.get(group, 0)


@dataclass(slots=True)
class UnitOfWork:
    sessions: async_sessionmaker[AsyncSession]
    publisher: SnapshotPublisher
    after_commit: list[Callable[[Publication], None]] = field(default_factory=list)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only session."""
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def change(self, caller: Caller, reason: str) -> AsyncIterator[Change]:
        """A config change in one transaction that ends with a new snapshot for every group
        whose content it changed (unless skipped), then runs the after-commit callbacks."""
        async with self.sessions() as session, session.begin():
            await lock_config(session)
            change = Change(session, reason)
            yield change
            if change.skipped:
                return
            await session.flush()
            try:
                change.snapshot = await self.publisher.publish(
                    session, actor=caller.actor, reason=change.reason, force=change.force
                )
            except ConfigRejected as exc:
                exc.referrer = exc.referrer or await describe_path(session, exc.field)
                raise
        for callback in self.after_commit:
            callback(change.snapshot)
