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

Files under ``<data_dir>/snapshot/``: ``lkg.envelope`` (the exact ``SignedEnvelope``
bytes) and ``hwm.json`` (``{"version": N, "sha256": "<hex>", "node_group": "<group>"}``) and ``trust.json`` (the learned trust
set, see ``dataplane.snapshot.trust``). The high-water
mark is kept apart from the envelope so deleting or replacing the envelope can
never roll the node back, and it is as hard to lose as the envelope: a store whose
``lkg.envelope`` exists without ``hwm.json`` refuses to start (``SnapshotFileInvalid``)
unless the operator says ``reset_high_water_mark`` (logged at ERROR); the mark then
restarts from the last-known-good. An air-gapped pin is checked against the mark
too, and serving it raises the mark and persists it as last-known-good, so neither
an older pin nor a deleted mark brings an older snapshot back. Every file here is
0600 in a 0700 directory: snapshots name the node's providers and identity hashes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from google.protobuf.message import DecodeError

from dataplane.config.model import DEFAULT_NODE_GROUP, RuntimeConfig, Scope, SecretRef
from dataplane.errors import (
    EnvelopeError,
    NoSnapshot,
    SnapshotCheckFailed,
    SnapshotFileInvalid,
    SnapshotInvalid,
)
from dataplane.providers.base import ProviderAdapter
from dataplane.providers.credentials import CREDENTIALS_DIR_NAME, CredentialScope, describe
from dataplane.providers.registry import build_adapter
from dataplane.routing.query import NodeContext
from dataplane.routing.table import RouteTable, build_route_table
from dataplane.snapshot.background import BackgroundWorker
from dataplane.snapshot.compile import compile_payload
from dataplane.snapshot.compiled import Compiled
from dataplane.snapshot.delta import DeltaMismatch, Rebuilt, rebuild
from dataplane.snapshot.envelope import key_id_for, verify
from dataplane.snapshot.files import atomic_write, envelope_parts, private_dir, read_envelope_file
from dataplane.snapshot.layout import TRUSTED_KEYS, LayoutError, scan
from dataplane.snapshot.trust import TrustSet
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2

SNAPSHOT_DIR = "snapshot"
"""Under a node's data dir: last-known-good, high-water mark and the learned trust set."""

_Delta = tuple[Compiled, Rebuilt]
"""A delta rebuilt on its base (the served snapshot compiled)."""

log = logging.getLogger("signalbox.dataplane.config")

CredentialResolver = Callable[[SecretRef], "str | None"]

LKG_FILE = "lkg.envelope"
MAX_UNUSABLE_LOGGED = 20
"""Providers named one by one in the log when a snapshot is applied; the rest are counted."""
MAX_REASON_CHARS = 300
HWM_FILE = "hwm.json"


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


@dataclass(frozen=True, slots=True)
class HighWaterMark:
    version: int
    sha256: bytes
    node_group: str = ""
    """The group whose version chain the mark is on ("": from before groups, any chain).
    Versions count per group: a node moved to another group (a new certificate, a new
    --node-group) starts on that group's chain; the scope check keeps the old group's
    snapshots out."""


@dataclass(eq=False, slots=True)
class ServingState:
    """One applied snapshot: the compiled config, its route table and an adapter per usable provider.

    Immutable once published, except for the in-flight counter that tells the
    store when the last request on a retired state has finished.
    """

    config: RuntimeConfig
    routes: RouteTable
    """The snapshot's routes prepared for this node (its mode and site)."""
    adapters: Mapping[str, ProviderAdapter]
    """Keyed by provider id."""
    unusable: Mapping[str, str]
    """Provider id -> why it cannot be used (e.g. its credential is missing)."""
    key_id: str
    """The trust key whose signature verified."""
    applied_at: float
    _inflight: int = 0
    _retired: bool = False
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def version(self) -> int:
        return self.config.version

    @contextmanager
    def use(self) -> Iterator[ServingState]:
        """Hold this state for one request, so its adapters outlive the request."""
        self._inflight += 1
        try:
            yield self
        finally:
            self._inflight -= 1
            if self._retired and self._inflight == 0:
                self._idle.set()

    def _retire(self) -> None:
        self._retired = True
        if self._inflight == 0:
            self._idle.set()


def load_trust_keys(paths: list[Path] | tuple[Path, ...]) -> dict[str, Ed25519PublicKey]:
    """Read Ed25519 public keys (PEM) and index them by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        try:
            key = load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"trust key {path}: cannot be read as a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"trust key {path}: not an Ed25519 public key")
        keys[key_id_for(key)] = key
    return keys


def scope_matches(node: Scope, snapshot: Scope) -> bool:
    """A snapshot is for this node when its deployment is the node's and each of its
    narrower fields (node group, site) is either empty (any) or the node's. A node that
    names no group is in the control plane's ``default`` group."""
    return (
        snapshot.deployment == node.deployment
        and snapshot.node_group in ("", node.node_group or DEFAULT_NODE_GROUP)
        and snapshot.site in ("", node.site)
    )


class SnapshotStore:
    """Verifies, applies, persists and serves snapshots for one node."""

    def __init__(
        self,
        *,
        trusted: Mapping[str, Ed25519PublicKey],
        scope: Scope,
        data_dir: Path,
        client: httpx.AsyncClient,
        allow_expired: bool = False,
        reset_high_water_mark: bool = False,
        resolve_credential: CredentialResolver | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[ServingState], Awaitable[None]] | None = None,
        node: NodeContext | None = None,
        idle_wait: float | None = None,
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
        self._hwm = self._read_hwm()
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

        return await asyncio.wait_for(wait(), timeout)

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
        delta: _Delta | None = None,
    ) -> ApplyResult:
        """``_apply``, where an unexpected failure (a bug, memory) becomes a refusal with a reason.

        The node keeps serving what it has and says why it could not take the snapshot (a
        NACK shown in `node list`), instead of losing its sync stream and being sent the same
        snapshot again and again with nothing to show for it."""
        try:
            return await self._apply(envelope, persist=persist, raw=raw, delta=delta)
        except Exception as exc:
            log.exception("snapshot could not be applied")
            version, digest = _peek(envelope) if delta is None else (delta[1].version, delta[1].digest)
            return ApplyResult(
                False,
                version,
                digest,
                f"internal error while applying: {type(exc).__name__} (see the node's log)",
            )

    def check(
        self, envelope: snapshot_pb2.SignedEnvelope, delta: _Delta | None = None
    ) -> tuple[RuntimeConfig, str, Compiled | None]:
        """The version-independent checks under this node's configuration (see
        ``check_envelope``), with the snapshot's layout when it has one (the base of the
        next delta). A rebuilt ``delta`` is compiled by difference from its base."""
        trust = self.trust.state
        compiled: list[Compiled] = []

        def compile_whole(payload: bytes) -> RuntimeConfig:
            try:
                layout = scan(payload)
            except LayoutError:
                return compile_payload(payload)  # served, but the next snapshot comes whole
            compiled.append(Compiled.full(layout, payload))
            return compiled[0].config

        def compile_by_difference(_: bytes) -> RuntimeConfig:
            assert delta is not None
            base, rebuilt = delta
            compiled.append(base.advance(rebuilt.layout, rebuilt.changes, rebuilt.payload, rebuilt.digest))
            return compiled[0].config

        config, key_id = check_envelope(
            envelope,
            trust.keys,
            scope=self._scope,
            now=None if self._allow_expired else self._clock(),
            revoked=trust.revoked,
            compile=compile_whole if delta is None else compile_by_difference,
            message=None if delta is None else delta[1].message,
        )
        return config, key_id, compiled[0] if compiled else None

    async def _apply(
        self,
        envelope: snapshot_pb2.SignedEnvelope,
        *,
        persist: bool,
        raw: bytes | None,
        from_disk: bool = False,
        delta: _Delta | None = None,
    ) -> ApplyResult:
        if persist and envelope.trust_chain:
            # Key statements the envelope carries (a node that missed a rotation, a pin
            # signed by a newer key): each verifies on its own under what we trust so far.
            try:
                await self._worker.run(self.trust.learn_chain, envelope)
            except OSError as exc:
                log.error("trust chain not applied: cannot persist the trust set: %s", _bounded(str(exc)))
        try:
            # Compiling a large snapshot (10,000 tenants) takes seconds; in a worker
            # thread the loop keeps serving the current snapshot meanwhile.
            config, key_id, compiled = await self._worker.run(self.check, envelope, delta)
        except SnapshotCheckFailed as exc:
            version, digest = _peek(envelope) if delta is None else (delta[1].version, delta[1].digest)
            log.warning("snapshot %s rejected: %s", version or "?", exc.reason)
            return ApplyResult(False, version, digest, exc.reason)

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
        state = self._build(config, routes, key_id)
        if persist:
            try:
                await self._worker.run(
                    self._write_lkg,
                    raw if raw is not None else (envelope if delta is None else (envelope, delta[1].payload)),
                    HighWaterMark(version, digest, group),
                )
            except OSError as exc:
                await self._close_adapters(state)
                return self._reject(version, digest, f"cannot persist last-known-good: {exc}")
        trust_unchanged = delta is not None and not delta[1].changes.touches((TRUSTED_KEYS,))
        if persist and not trust_unchanged:
            # (A delta that leaves the trusted keys as they were cannot change the trust set.)
            try:
                await self._worker.run(
                    self.trust.learn, envelope if delta is None else _whole(envelope, delta[1])
                )
            except (EnvelopeError, OSError) as exc:
                # The snapshot itself verified and is served; only what it says about keys
                # is not taken (logged loudly: the node may not follow the next rotation).
                log.error("snapshot %d: trust statement not applied: %s", version, _bounded(str(exc)))
        if from_disk and (hwm is None or version > hwm.version):
            # The envelope is written before the mark: a crash in between leaves the
            # envelope ahead, and the mark catches up here.
            await self._worker.run(self._write_hwm, HighWaterMark(version, digest, group))
        self._hwm = HighWaterMark(version, digest, group)
        self._compiled = compiled
        await self._publish(state)
        log.info("serving snapshot %d (%s) signed by %s", version, digest.hex()[:12], key_id)
        return ApplyResult(True, version, digest, changed=True)

    def _reject(self, version: int, digest: bytes, reason: str) -> ApplyResult:
        log.warning("snapshot %d rejected: %s", version, reason)
        return ApplyResult(False, version, digest, reason)

    def _build(self, config: RuntimeConfig, routes: RouteTable, key_id: str) -> ServingState:
        adapters: dict[str, ProviderAdapter] = {}
        unusable: dict[str, str] = {}
        for provider in config.providers.values():
            # A provider that cannot be set up must not take the node down: it is
            # marked unusable and requests routed to it get a generic error. The
            # reasons are for the operator (this log, once per apply): they name
            # references (sanitized by ``describe``), never values, and callers
            # never see them.
            try:
                credential = self._resolve(provider.credential) if provider.credential else None
            except Exception as exc:
                unusable[provider.id] = _bounded(f"credential cannot be resolved: {exc}")
                continue
            if provider.credential and credential is None:
                unusable[provider.id] = (
                    f"credential ({describe(provider.credential)}) is not available on this node"
                )
                continue
            try:
                adapters[provider.id] = build_adapter(provider, self._client, credential)
            except Exception as exc:
                unusable[provider.id] = _bounded(f"adapter cannot be built: {type(exc).__name__}: {exc}")
        for i, (provider_id, why) in enumerate(unusable.items()):
            if i == MAX_UNUSABLE_LOGGED:
                log.warning(
                    "%d more providers unusable in snapshot %d",
                    len(unusable) - MAX_UNUSABLE_LOGGED,
                    config.version,
                )
                break
            name = config.providers[provider_id].name
            log.warning(
                "provider %s (%s) unusable in snapshot %d: %s",
                _bounded(name, 64),
                provider_id,
                config.version,
                why,
            )
        return ServingState(config, routes, adapters, unusable, key_id, self._clock())

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
        await self._close_adapters(state)

    @staticmethod
    async def _close_adapters(state: ServingState) -> None:
        for provider_id, adapter in state.adapters.items():
            try:
                await adapter.aclose()
            except Exception:
                log.exception("closing adapter of provider %s failed", provider_id)

    async def aclose(self) -> None:
        """Close every adapter; the caller has already drained requests."""
        for task in list(self._closers):
            task.cancel()
        for task in list(self._closers):
            with suppress(asyncio.CancelledError):
                await task
        state, self.current = self.current, None
        if state is not None:
            await self._close_adapters(state)
        self._worker.close()

    # ---- persistence ----

    def _write_lkg(
        self,
        data: bytes | snapshot_pb2.SignedEnvelope | tuple[snapshot_pb2.SignedEnvelope, memoryview],
        hwm: HighWaterMark,
    ) -> None:
        """``data``: the file's bytes, an envelope, or an envelope without its payload and
        the payload (written in pieces: the megabytes are not copied into one message)."""
        if isinstance(data, snapshot_pb2.SignedEnvelope):
            data = data.SerializeToString()  # here, off the event loop: megabytes at fleet size
        parts = envelope_parts(*data) if isinstance(data, tuple) else [data]
        private_dir(self._dir)
        first = not (self._dir / HWM_FILE).exists()
        if first:
            # The very first time the mark goes first: a crash in between must not leave an
            # envelope without a mark, which refuses to start.
            self._write_hwm(hwm)
        atomic_write(self._dir / LKG_FILE, *parts)
        if not first:
            self._write_hwm(hwm)

    def _write_hwm(self, hwm: HighWaterMark) -> None:
        private_dir(self._dir)
        body = json.dumps(
            {"version": hwm.version, "sha256": hwm.sha256.hex(), "node_group": hwm.node_group}
        ).encode()
        atomic_write(self._dir / HWM_FILE, body)

    def _read_hwm(self) -> HighWaterMark | None:
        path = self._dir / HWM_FILE
        try:
            data = json.loads(path.read_bytes())
            return HighWaterMark(
                int(data["version"]), bytes.fromhex(data["sha256"]), str(data.get("node_group", ""))
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Without a trustworthy mark, rollback protection is gone: refuse to start.
            raise SnapshotFileInvalid(f"{path}: unreadable high-water mark: {exc}") from exc


def _whole(envelope: snapshot_pb2.SignedEnvelope, rebuilt: Rebuilt) -> snapshot_pb2.SignedEnvelope:
    """``envelope`` (sent without its payload) with the rebuilt payload in it."""
    whole = snapshot_pb2.SignedEnvelope()
    whole.CopyFrom(envelope)
    whole.payload = bytes(rebuilt.payload)
    return whole


def check_envelope(
    envelope: snapshot_pb2.SignedEnvelope,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    scope: Scope | None,
    now: float | None,
    revoked: AbstractSet[str] = frozenset(),
    compile: Callable[[bytes], RuntimeConfig] = compile_payload,
    message: bytes | None = None,
) -> tuple[RuntimeConfig, str]:
    """Signature, compile, scope and expiry checks; return the config and the verifying key id.

    ``scope=None`` skips the scope check and ``now=None`` the expiry check (a site
    without trusted time). Raises ``SnapshotCheckFailed`` with the NACK reason.
    """
    try:
        key_id = verify(envelope, trusted, revoked=revoked, message=message)
    except EnvelopeError as exc:
        raise SnapshotCheckFailed(f"signature: {exc}") from exc
    try:
        config = compile(envelope.payload)
    except SnapshotInvalid as exc:
        raise SnapshotCheckFailed(f"invalid payload: {exc}") from exc
    if scope is not None and not scope_matches(scope, config.scope):
        raise SnapshotCheckFailed(
            f"scope: snapshot is for {_scope_text(config.scope)}, node is {_scope_text(scope)}"
        )
    if now is not None and config.expires_at is not None and config.expires_at <= now:
        raise SnapshotCheckFailed(
            f"expired: snapshot {config.version} expired {now - config.expires_at:.0f}s ago"
        )
    return config, key_id


def _peek(envelope: snapshot_pb2.SignedEnvelope) -> tuple[int, bytes]:
    """Version and hash of an envelope that failed a check, for the NACK (best effort)."""

    digest = hashlib.sha256(envelope.payload).digest()
    snapshot = snapshot_pb2.Snapshot()
    try:
        snapshot.ParseFromString(envelope.payload)
    except DecodeError:
        return 0, digest
    return int(snapshot.version), digest


def _bounded(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` on one line, without control characters, cut at ``limit`` characters."""
    clean = "".join(c if c.isprintable() else " " for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _scope_text(scope: Scope) -> str:
    return (
        f"deployment={scope.deployment or '-'} node_group={scope.node_group or '-'} site={scope.site or '-'}"
    )
