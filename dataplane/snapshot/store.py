"""The node's snapshot state: what it serves, what it last accepted, and why it refused.

``SnapshotStore.apply`` is the only way configuration changes on a node. It runs
the checks of the design contract in order and stops at the first failure:

1. the envelope verifies under one of the node's trust keys;
2. the payload decodes and compiles (referential integrity, known provider types);
3. the snapshot's scope is the node's own;
4. it has not expired (unless the site runs without trusted time: ``allow_expired``);
5. its version is above the persisted high-water mark. The same version with the
   same hash is an idempotent ACK; the same version with a different hash is an
   alarm (logged at ERROR) and a NACK.

Only then is the serving state built (one adapter per provider, credentials
resolved here, every policy's routes prepared, off the request path), the envelope persisted as last-known-good
(write, fsync, rename) together with the high-water mark, and the state swapped
in with one attribute assignment. A request takes ``store.current`` once and runs
to the end on it; the old adapters are closed when its last request finishes.

Checks 1-4 are ``dataplane.snapshot.checks`` (also for a snapshot rebuilt from a delta,
``apply_delta``); the serving state is ``dataplane.snapshot.serving``; the files the
last-known-good and the high-water mark live in are ``dataplane.snapshot.lkg``. An
air-gapped pin is checked against the mark too, and serving it raises the mark and
persists it as last-known-good, so neither an older pin nor a deleted mark brings an
older snapshot back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dataplane.config.model import RuntimeConfig, Scope
from dataplane.errors import EnvelopeError, NoSnapshot, SnapshotCheckFailed, SnapshotFileInvalid
from dataplane.providers.credentials import CREDENTIALS_DIR_NAME, CredentialScope
from dataplane.routing.query import NodeContext
from dataplane.routing.table import build_route_table, unreachable
from dataplane.snapshot.background import BackgroundWorker
from dataplane.snapshot.checks import Delta, check_snapshot, peek, whole_envelope
from dataplane.snapshot.compiled import Compiled
from dataplane.snapshot.delta import DeltaMismatch, rebuild
from dataplane.snapshot.files import atomic_write, read_envelope_file
from dataplane.snapshot.hash_key import (
    API_KEY_HASH_KEY_FILE,
    NO_HASH_KEYS,
    HashKeys,
    decode_hash_keys,
    read_hash_key_file,
)
from dataplane.snapshot.layout import TRUSTED_KEYS
from dataplane.snapshot.lkg import (
    HWM_FILE,
    LKG_FILE,
    SNAPSHOT_DIR,
    HighWaterMark,
    read_hwm,
    write_hwm,
    write_lkg,
)
from dataplane.snapshot.serving import (
    CredentialResolver,
    ServingState,
    bounded,
    build_state,
    close_adapters,
)
from dataplane.snapshot.trust import TrustSet
from dataplane.upstream import UpstreamClient
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2

log = logging.getLogger("signalbox.dataplane.config")


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What ``apply`` decided; ``reason`` is the NACK reason when not accepted."""

    accepted: bool
    version: int
    payload_sha256: bytes
    reason: str = ""
    changed: bool = False
    """True when the node now serves a different snapshot than before."""
    resync: bool = False
    """A delta that could not be rebuilt on what this node runs: ask for the snapshot whole
    (neither an ACK nor a NACK: nothing was wrong with the snapshot itself)."""


class SnapshotStore:
    """Verifies, applies, persists and serves snapshots for one node."""

    def __init__(
        self,
        *,
        trusted: Mapping[str, Ed25519PublicKey],
        scope: Scope,
        data_dir: Path,
        client: UpstreamClient,
        allow_expired: bool = False,
        reset_high_water_mark: bool = False,
        resolve_credential: CredentialResolver | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[ServingState], Awaitable[None]] | None = None,
        node: NodeContext | None = None,
        idle_wait: float | None = None,
        api_key_hash_keys: HashKeys | None = None,
    ) -> None:
        self._scope = scope
        # What routes are prepared for; it must equal the pipeline's NodeContext for the
        # preparation to be used. Without one: a cloud node at the scope's site.
        self._node = node if node is not None else NodeContext(site=scope.site)
        self._dir = Path(data_dir) / SNAPSHOT_DIR
        self._client = client
        self._allow_expired = allow_expired
        # Without a resolver: the operator's defaults (the SIGNALBOX_CRED_ prefix and
        # <data_dir>/credentials), never the node's whole environment or file system.
        self._resolve = resolve_credential or CredentialScope(Path(data_dir) / CREDENTIALS_DIR_NAME).resolve
        self._clock = clock
        self._on_change = on_change
        self._lock = asyncio.Lock()
        # Verifying, compiling, persisting: on a low-priority thread that gives way to serving.
        self._worker = BackgroundWorker(idle_wait=idle_wait, busy=self._serving)
        self._closers: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        self.current: ServingState | None = None
        """The state new requests use; None until a valid snapshot was applied."""
        self.last_rejection: str = ""
        """The reason of the most recent NACK, for status output."""
        self.deltas_applied = 0
        """Snapshots taken as deltas (rebuilt here) since start."""
        self._compiled: Compiled | None = None
        """The served snapshot as a layout and its compiled form: the base of the next delta."""
        self._hwm = read_hwm(self._dir)
        # The key versions API keys' HMAC digests are computed with (controlplane.api_key_hash):
        # the operator's (an air-gapped node), else those the control plane sent last.
        self._hash_key_pinned = api_key_hash_keys is not None
        self._hash_keys = api_key_hash_keys if api_key_hash_keys is not None else self._read_hash_keys()
        # The operator's keys plus those learned from verified statements (see trust.py).
        self.trust = TrustSet(trusted, self._dir)
        if self._hwm is None and (self._dir / LKG_FILE).exists():
            if not reset_high_water_mark:
                raise SnapshotFileInvalid(
                    f"{self._dir / HWM_FILE}: high-water mark missing next to {LKG_FILE}; rollback "
                    "protection cannot be trusted. Restore the file, or start once with "
                    "--reset-high-water-mark to restart it from the last-known-good"
                )
            log.error(
                "HIGH-WATER MARK RESET: %s was missing and --reset-high-water-mark was given; "
                "rollback protection restarts from the last-known-good snapshot",
                self._dir / HWM_FILE,
            )

    def _read_hash_keys(self) -> HashKeys:
        path = self._dir / API_KEY_HASH_KEY_FILE
        try:
            return decode_hash_keys(read_hash_key_file(path), str(path))
        except FileNotFoundError:
            return NO_HASH_KEYS
        except (ValueError, OSError) as exc:
            # The control plane sends them again on the next sync stream. (OSError: a FIFO or a
            # directory here refused the start with "[Errno 22] not a regular file", no file named.)
            why = f"{path}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
            log.error("API-key hash key versions not loaded: %s", why)
            return NO_HASH_KEYS

    @property
    def api_key_hash_key_versions(self) -> tuple[int, ...]:
        """The versions of the API-key hash key this node verifies keys under."""
        return self._hash_keys.versions

    async def set_api_key_hash_keys(self, keys: HashKeys) -> None:
        """Take the live API-key hash key versions the control plane sent (a version not among
        them is retired: forgotten here): kept in the data dir (0600, written atomically) for
        restarts, and used by the served snapshot from now on."""
        if keys == self._hash_keys or self._hash_key_pinned:
            return
        async with self._lock:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            await self._worker.run(atomic_write, self._dir / API_KEY_HASH_KEY_FILE, keys.encode())
            forgotten = sorted(set(self._hash_keys.versions) - set(keys.versions))
            self._hash_keys = keys
            current = self.current
            if current is not None:
                # Keys of a new version verify from the next request on, not the next snapshot.
                config = replace(current.config, api_key_hash_keys=keys.keys)
                state = build_state(
                    config,
                    replace(current.routes, config=config),
                    current.key_id,
                    resolve=self._resolve,
                    client=self._client,
                    clock=self._clock,
                )
                await self._publish(state)
        log.info(
            "API-key hash key versions %s received from the control plane%s",
            ", ".join(map(str, keys.versions)),
            f" (retired, forgotten: {', '.join(map(str, forgotten))})" if forgotten else "",
        )

    def _serving(self) -> bool:
        """Whether requests are in flight on the served snapshot (snapshot work then yields)."""
        return self.current is not None and self.current._inflight > 0

    # ---- reading ----

    def require(self) -> ServingState:
        """The serving state, or ``NoSnapshot`` (UNAVAILABLE) when there is none."""
        state = self.current
        if state is None:
            raise NoSnapshot("node has no valid configuration snapshot yet")
        return state

    @property
    def version(self) -> int:
        """The version served now (0: none)."""
        return self.current.version if self.current is not None else 0

    @property
    def payload_sha256(self) -> bytes:
        return self.current.config.payload_sha256 if self.current is not None else b""

    @property
    def high_water_mark(self) -> HighWaterMark | None:
        return self._hwm

    async def wait_for_version(self, version: int, timeout: float | None = None) -> ServingState:
        """Wait until the node serves ``version`` or a later one."""

        async def wait() -> ServingState:
            async with self._changed:
                await self._changed.wait_for(lambda: self.version >= version)
                assert self.current is not None
                return self.current

        async with asyncio.timeout(timeout):  # not wait_for: it can lose a cancel on 3.11
            return await wait()

    # ---- applying ----

    async def apply(self, envelope: snapshot_pb2.SignedEnvelope) -> ApplyResult:
        """Run every check, then build, persist and publish; never raises for a bad envelope."""
        async with self._lock:
            result = await self._apply_guarded(envelope, persist=True, raw=None)
        if not result.accepted:
            self.last_rejection = result.reason
        return result

    async def apply_delta(self, delta: sync_pb2.SnapshotDelta) -> ApplyResult:
        """A snapshot sent as changes to the served one: rebuild the full payload, then every
        check of ``apply`` on the full envelope. ``resync`` when it cannot be rebuilt here."""
        async with self._lock:
            base = self._compiled
            current = self.current
            if (
                base is None
                or current is None
                or current.config.version != delta.base_version
                or current.config.payload_sha256 != delta.base_sha256
            ):
                return ApplyResult(
                    False,
                    0,
                    bytes(delta.payload_sha256),
                    f"delta is based on v{delta.base_version}, this node serves v{self.version}",
                    resync=True,
                )
            try:
                rebuilt = await self._worker.run(rebuild, base.layout, delta)
            except DeltaMismatch as exc:
                log.warning("delta from v%d not rebuilt: %s", delta.base_version, exc)
                return ApplyResult(False, 0, bytes(delta.payload_sha256), f"delta: {exc}", resync=True)
            # The envelope without its payload: the rebuilt payload (and the PAE bytes its
            # signatures cover) travel beside it, so the megabytes are never copied again.
            result = await self._apply_guarded(delta.envelope, persist=True, raw=None, delta=(base, rebuilt))
            if result.changed:
                self.deltas_applied += 1
        if not result.accepted:
            self.last_rejection = result.reason
        return result

    async def load_last_known_good(self) -> ApplyResult | None:
        """Serve the persisted last-known-good, verified again; None when there is none.

        Raises ``SnapshotFileInvalid`` when the file exists but cannot be served:
        the node then stays closed (UNAVAILABLE) until a valid snapshot arrives.
        """
        path = self._dir / LKG_FILE
        if not path.exists():
            return None
        raw, envelope = await read_envelope_file(path)
        async with self._lock:
            result = await self._apply(envelope, persist=False, raw=raw, from_disk=True)
        if not result.accepted:
            raise SnapshotFileInvalid(f"{path}: {result.reason}")
        return result

    async def load_pinned(self, path: Path) -> ApplyResult:
        """Air-gapped pin: serve the envelope in ``path``; raise ``SnapshotFileInvalid`` if invalid."""
        raw, envelope = await read_envelope_file(Path(path))
        result = await self.apply_pinned(raw, envelope)
        if not result.accepted:
            raise SnapshotFileInvalid(f"{path}: {result.reason}")
        return result

    async def apply_pinned(self, raw: bytes, envelope: snapshot_pb2.SignedEnvelope) -> ApplyResult:
        """A pin's envelope as read from its file (``raw``): every check, never raises for a bad one.

        Checked against the persisted high-water mark like any snapshot, and persisted
        as last-known-good (its exact bytes) with the mark raised: an older pin is refused
        afterwards, and deleting the mark is noticed. Removing the pin returns to the
        normal flow. Used at start (``load_pinned``) and by the pin watcher.
        """
        async with self._lock:
            result = await self._apply_guarded(envelope, persist=True, raw=raw)
        if not result.accepted:
            self.last_rejection = result.reason
        return result

    async def _apply_guarded(
        self,
        envelope: snapshot_pb2.SignedEnvelope,
        *,
        persist: bool,
        raw: bytes | None,
        delta: Delta | None = None,
    ) -> ApplyResult:
        """``_apply``, where an unexpected failure (a bug, memory) becomes a refusal with a reason.

        The node keeps serving what it has and says why it could not take the snapshot (a
        NACK shown in `node list`), instead of losing its sync stream and being sent the same
        snapshot again and again with nothing to show for it."""
        try:
            return await self._apply(envelope, persist=persist, raw=raw, delta=delta)
        except Exception as exc:
            log.exception("snapshot could not be applied")
            version, digest = peek(envelope) if delta is None else (delta[1].version, delta[1].digest)
            return ApplyResult(
                False,
                version,
                digest,
                f"internal error while applying: {type(exc).__name__} (see the node's log)",
            )

    def check(
        self, envelope: snapshot_pb2.SignedEnvelope, delta: Delta | None = None
    ) -> tuple[RuntimeConfig, str, Compiled | None]:
        """The version-independent checks under this node's scope and trust (``check_snapshot``)."""
        now = None if self._allow_expired else self._clock()
        return check_snapshot(envelope, self.trust.state, scope=self._scope, now=now, delta=delta)

    async def _apply(
        self,
        envelope: snapshot_pb2.SignedEnvelope,
        *,
        persist: bool,
        raw: bytes | None,
        from_disk: bool = False,
        delta: Delta | None = None,
    ) -> ApplyResult:
        if persist and envelope.trust_chain:
            # Key statements the envelope carries (a node that missed a rotation, a pin
            # signed by a newer key): each verifies on its own under what we trust so far.
            try:
                await self._worker.run(self.trust.learn_chain, envelope)
            except OSError as exc:
                log.error("trust chain not applied: cannot persist the trust set: %s", bounded(str(exc)))
        try:
            # Compiling a large snapshot (10,000 tenants) takes seconds; in a worker
            # thread the loop keeps serving the current snapshot meanwhile.
            config, key_id, compiled = await self._worker.run(self.check, envelope, delta)
        except SnapshotCheckFailed as exc:
            version, digest = peek(envelope) if delta is None else (delta[1].version, delta[1].digest)
            log.warning("snapshot %s rejected: %s", version or "?", exc.reason)
            return ApplyResult(False, version, digest, exc.reason)

        config = replace(config, api_key_hash_keys=self._hash_keys.keys)
        version, digest = config.version, config.payload_sha256
        hwm = self._hwm
        group = config.scope.node_group
        if hwm is not None and hwm.node_group and group and hwm.node_group != group:
            log.warning(
                "snapshot %d is on node group %s's version chain, the high-water mark on %s's: "
                "this node moved groups; rollback protection restarts on %s's chain",
                version,
                group,
                hwm.node_group,
                group,
            )
            hwm = None
        if hwm is not None:
            if version < hwm.version:
                return self._reject(
                    version, digest, f"rollback: version {version} is below the applied version {hwm.version}"
                )
            if version == hwm.version and digest != hwm.sha256:
                log.error(
                    "ALARM: snapshot version %d offered with hash %s, but %s was applied under that "
                    "version; refusing it",
                    version,
                    digest.hex(),
                    hwm.sha256.hex(),
                )
                return self._reject(
                    version,
                    digest,
                    f"conflict: version {version} was already applied with hash {hwm.sha256.hex()}, "
                    f"this one has {digest.hex()}",
                )
            current = self.current
            if version == hwm.version and current is not None and current.config.payload_sha256 == digest:
                return ApplyResult(True, version, digest)

        # The route table: every rule's request-independent checks, once per applied
        # snapshot, so no request pays for them. In a thread: for ten thousand tenants
        # it takes seconds, and the loop keeps serving the current snapshot meanwhile.
        previous = self.current
        if (
            previous is not None
            and config.models is previous.config.models
            and config.providers is previous.config.providers
            and config.policies is previous.config.policies
        ):
            # Compiled by difference with the registry untouched (a tenant or key change):
            # the routes are the same; only the config they belong to is new.
            routes = replace(previous.routes, config=config)
        else:
            routes = await self._worker.run(build_route_table, config, self._node)
        state = build_state(
            config, routes, key_id, resolve=self._resolve, client=self._client, clock=self._clock
        )
        if persist:
            try:
                await self._worker.run(
                    write_lkg,
                    self._dir,
                    raw if raw is not None else (envelope if delta is None else (envelope, delta[1].payload)),
                    HighWaterMark(version, digest, group),
                )
            except OSError as exc:
                await close_adapters(state)
                return self._reject(version, digest, f"cannot persist last-known-good: {exc}")
        trust_unchanged = delta is not None and not delta[1].changes.touches((TRUSTED_KEYS,))
        if persist and not trust_unchanged:
            # (A delta that leaves the trusted keys as they were cannot change the trust set.)
            try:
                await self._worker.run(
                    self.trust.learn, envelope if delta is None else whole_envelope(envelope, delta[1])
                )
            except (EnvelopeError, OSError) as exc:
                # The snapshot itself verified and is served; only what it says about keys
                # is not taken (logged loudly: the node may not follow the next rotation).
                log.error("snapshot %d: trust statement not applied: %s", version, bounded(str(exc)))
        if from_disk and (hwm is None or version > hwm.version):
            # The envelope is written before the mark: a crash in between leaves the
            # envelope ahead, and the mark catches up here.
            await self._worker.run(write_hwm, self._dir, HighWaterMark(version, digest, group))
        self._hwm = HighWaterMark(version, digest, group)
        self._compiled = compiled
        await self._publish(state)
        log.info("serving snapshot %d (%s) signed by %s", version, digest.hex()[:12], key_id)
        if why := unreachable(config.providers.values(), self._node):
            log.warning("snapshot %d: %s", version, bounded(why, 1000))
        return ApplyResult(True, version, digest, changed=True)

    def _reject(self, version: int, digest: bytes, reason: str) -> ApplyResult:
        log.warning("snapshot %d rejected: %s", version, reason)
        return ApplyResult(False, version, digest, reason)

    async def _publish(self, state: ServingState) -> None:
        old = self.current
        self.current = state  # the atomic swap: requests read this attribute once
        if old is not None:
            old._retire()
            task = asyncio.get_running_loop().create_task(self._close_when_idle(old))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)
        async with self._changed:
            self._changed.notify_all()
        if self._on_change is not None:
            await self._on_change(state)

    async def _close_when_idle(self, state: ServingState) -> None:
        await state._idle.wait()
        await close_adapters(state)

    async def aclose(self) -> None:
        """Close every adapter; the caller has already drained requests."""
        for task in list(self._closers):
            task.cancel()
        for task in list(self._closers):
            with suppress(asyncio.CancelledError):
                await task
        state, self.current = self.current, None
        if state is not None:
            await close_adapters(state)
        self._worker.close()
