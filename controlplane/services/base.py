"""The unit of work shared by the services, and the group commit of config changes.

Every config change ends with a new signed snapshot, and a snapshot is a full rebuild
(at 50,000 API keys: build, the node's compiler as a check, sign and store take a few
hundred ms). One publish per change would cap a control plane at a few changes per
second, so changes that arrive together share one transaction and one snapshot:

- A change joins the open *batch* of this replica. A batch runs once the previous one
  has committed: it opens a transaction, takes the config lock (which serializes batches
  across replicas, so versions are allocated in commit order), then runs its changes
  one after the other, each in a SAVEPOINT of its own. A change that fails (not found,
  already exists, a bad argument) rolls back its savepoint only and gets its own error.
- Once no change is waiting, the batch closes (later arrivals form the next batch) and
  publishes once: build, the full compile with the node's compiler as the last gate
  before signing, sign, store, commit. Every change of the batch gets that version.
  N concurrent changes thus make at most N versions, usually far fewer.
- Guarantees kept from one-change-one-snapshot: nothing inconsistent is signed (the full
  compile is the gate); a change the compiler refuses is refused to the admin who made
  it with the precise error (path and referrer); nothing of a refused change stays. When
  the batch's candidate does not compile, the savepoints are rolled back newest first,
  recompiling each time, until it compiles: the last change rolled back is the one that
  broke it (the state before it compiled) and gets the ``ConfigRejected``; the changes
  after it ran on top of it and cannot be told apart from it, so they are rolled back
  too and get ``BatchAborted`` (ABORTED: nothing written, safe to retry). A refused
  change costs one extra compile per change after it in its batch; valid batches
  compile once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction, async_sessionmaker

from controlplane.errors import BatchAborted, ConfigRejected, InvalidArgument
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
    """Who is making an admin call (from an admin token or a mapped client certificate)."""

    token_id: str
    name: str
    role: str = "platform_admin"
    """``platform_admin``, ``tenant_admin`` or ``auditor`` (``controlplane.services.admin.ROLES``)."""
    tenant_id: str = ""
    """The tenant a tenant-scoped identity is bound to; "" for platform-wide ones."""
    tenant_name: str = ""
    tenant_active: bool = True
    """False: the identity's tenant is deactivated, and the identity refused
    (``controlplane.services.admin.check_active``)."""

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


log = logging.getLogger(__name__)

MAX_REASONS = 20
"""Changes named one by one in a batched snapshot's reason; the rest are counted."""


@dataclass(eq=False, slots=True)
class _Member:
    """One change in a batch, as the batch's runner sees it."""

    caller: Caller
    go: asyncio.Future[AsyncSession] = field(default_factory=asyncio.Future)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    result: asyncio.Future[Publication | None] = field(default_factory=asyncio.Future)
    change: Change | None = None
    savepoint: AsyncSessionTransaction | None = None
    """Set while the change's writes are in the batch's transaction."""

    @property
    def publishes(self) -> bool:
        return self.savepoint is not None and self.change is not None and not self.change.skipped

    def settle(self, outcome: Publication | BaseException | None) -> None:
        """End the change's wait (for its turn, for its snapshot) with ``outcome``."""
        if not self.go.done():
            if isinstance(outcome, BaseException):
                self.go.set_exception(outcome)
                self.go.exception()  # retrieved: a caller that left must not be logged about
            else:
                self.go.cancel()
        if not self.result.done():
            if isinstance(outcome, BaseException):
                self.result.set_exception(outcome)
                self.result.exception()
            else:
                self.result.set_result(outcome)


@dataclass(eq=False, slots=True)
class _Batch:
    members: list[_Member] = field(default_factory=list)
    closed: bool = False
    task: asyncio.Task[None] | None = None


def _forced(members: list[_Member]) -> frozenset[str] | None:
    """The groups a batch must publish even unchanged: the union of its changes' (``None``,
    every group, when one of them says so)."""
    forced: frozenset[str] = frozenset()
    for member in members:
        assert member.change is not None
        if member.change.force is None:
            return None
        forced |= member.change.force
    return forced


def _summary(members: list[_Member]) -> tuple[str, str]:
    """(created_by, reason) of a batched snapshot."""
    actors = list(dict.fromkeys(m.caller.actor for m in members))
    actor = actors[0] if len(actors) == 1 else ", ".join(actors)
    if len(actor) > NAME_CHARS:
        actor = f"{len(actors)} admins"
    reasons = [m.change.reason for m in members if m.change is not None]
    if len(reasons) == 1:
        return actor, reasons[0]
    named = "; ".join(reasons[:MAX_REASONS])
    more = f"; and {len(reasons) - MAX_REASONS} more" if len(reasons) > MAX_REASONS else ""
    return actor, f"{len(reasons)} changes: {named}{more}"


@dataclass(slots=True)
class UnitOfWork:
    sessions: async_sessionmaker[AsyncSession]
    publisher: SnapshotPublisher
    after_commit: list[Callable[[Publication], None]] = field(default_factory=list)
    _open: _Batch | None = field(default=None, repr=False)
    _serial: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only session."""
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def change(self, caller: Caller, reason: str) -> AsyncIterator[Change]:
        """A config change that ends with a new snapshot (unless skipped): the block runs in
        a savepoint of its batch's transaction (see the module docstring), and the context
        exits once the snapshot carrying it is committed, or with the change's own error."""
        batch = self._open
        if batch is None or batch.closed:
            batch = self._open = _Batch()
            batch.task = asyncio.create_task(self._run(batch), name="config-change-batch")
        member = _Member(caller)
        batch.members.append(member)
        try:
            session = await member.go
        except BaseException:
            member.finished.set()  # cancelled while waiting for its turn: it leaves
            raise
        try:
            member.savepoint = await session.begin_nested()
            member.change = Change(session, reason)
            yield member.change
            await session.flush()
        except BaseException:
            savepoint, member.savepoint = member.savepoint, None
            if savepoint is not None and savepoint.is_active:
                await savepoint.rollback()
            raise
        finally:
            member.finished.set()
        # A skipped change waits for its batch too: its transaction (and the caller's
        # engine) is in use until the batch commits.
        publication = await asyncio.shield(member.result)
        if not member.change.skipped:
            member.change.snapshot = publication

    async def _run(self, batch: _Batch) -> None:
        """Run ``batch``'s changes in one transaction and publish them as one snapshot."""
        async with self._serial:
            try:
                async with self.sessions() as session, session.begin():
                    await lock_config(session)
                    i = 0
                    while i < len(batch.members):  # grows while earlier changes run
                        member = batch.members[i]
                        i += 1
                        if not member.go.done():
                            member.go.set_result(session)
                        await member.finished.wait()
                    batch.closed = True  # no await since the last check: nobody is left out
                    published = await self._publish(session, batch)
            except BaseException as exc:
                for member in batch.members:
                    member.settle(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            finally:
                batch.closed = True
                if self._open is batch:
                    self._open = None
        for member in batch.members:
            member.settle(published if member.publishes else None)
        if published is not None:
            for callback in self.after_commit:
                callback(published)

    async def _publish(self, session: AsyncSession, batch: _Batch) -> Publication | None:
        """One snapshot of the batch's changes; refused changes are found and rolled back."""
        included = [m for m in batch.members if m.savepoint is not None]
        refused: list[tuple[_Member, ConfigRejected]] = []
        published = None
        while publishing := [m for m in included if m.publishes]:
            actor, reason = _summary(publishing)
            try:
                published = await self.publisher.publish(
                    session, actor=actor, reason=reason, force=_forced(publishing)
                )
                break
            except ConfigRejected as exc:
                exc.referrer = exc.referrer or await describe_path(session, exc.field)
                # Newest first: until what is left compiles. Changes that skipped wrote
                # nothing to publish and are neither culprits nor rolled back.
                while included and not included[-1].publishes:
                    included.pop()
                newest = included.pop()
                assert newest.savepoint is not None
                await newest.savepoint.rollback()
                newest.savepoint = None
                refused.append((newest, exc))
        if refused:
            culprit, error = refused[-1]
            culprit.settle(error)
            log.info(
                "config change refused (%s); %d later change(s) of its batch aborted", error, len(refused) - 1
            )
            for member, _ in refused[:-1]:
                member.settle(
                    BatchAborted(
                        "rolled back with a change batched before it that was refused "
                        f"({error.field}: {error.problem}); nothing was written, retry"
                    )
                )
        return published
