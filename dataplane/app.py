"""A data-plane node: the Infer API, grpc health, snapshot sync and evidence, wired together.

``DataPlaneNode`` is an async context manager::

    async with DataPlaneNode(NodeSettings(listen="127.0.0.1:0", trust_keys=(key,), ...)) as node:
        await node.wait_for_version(3)
        ... call node.address ...

Start order: the node's identity (``dataplane.identity``: a valid certificate in
``<data_dir>/identity``, else enrollment with the token, else refuse to start), the
evidence log (its checkpoints signed with the node key, generated here if the node never
enrolled), one pooled ``UpstreamClient`` for every adapter, the
snapshot store (pinned file, or the persisted last-known-good), the gRPC server
(health NOT_SERVING until a valid snapshot is served), then the config-sync client, or,
for a pinned file, its watcher (a newer signed file at that path is applied live), the quota
leaser (rate limits and budgets, ``dataplane.quota``: leased from the control plane, or on an
air-gapped node from worker 0's own ledger, ``dataplane.quota.local``) and the
certificate renewer.
Stop order (also on SIGTERM through ``serve``): health NOT_SERVING, stop syncing or
watching, stop accepting, drain in-flight calls and streams for up to ``drain_seconds``
(the quota leaser serving them), the leaser's last round (``QuotaLeaser.close``: the drain's
spend to the ledger), close adapters and the HTTP client, flush and sync the evidence log
and sign its last checkpoint, then give the shipper up to ``evidence_drain`` seconds to send
the control plane what it lacks of them (while it is connected; the rest ships at the next
start).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from dataplane.control_plane_tls import control_plane_tls
from dataplane.doors import INFER_SERVICE, Doors
from dataplane.errors import SnapshotFileInvalid
from dataplane.evidence.log import (
    EvidenceLog,
    log_path,
)
from dataplane.evidence.shipper import EvidenceShipper
from dataplane.evidence.spend import spent_since
from dataplane.evidence.spool import Spool
from dataplane.governance.enforce import Governance
from dataplane.identity import CertificateRenewer, IdentityFiles
from dataplane.metrics_server import NodeMetrics, NodeState
from dataplane.node_settings import WORKER_FOLLOW_INTERVAL_S, WORKERS_DIR, NodeSettings
from dataplane.pipeline import GovernanceStep, Pipeline
from dataplane.pipeline.tracing import RequestTracer
from dataplane.providers.credentials import CREDENTIALS_DIR_NAME, CredentialScope
from dataplane.quota import QuotaLeaser, Quotas
from dataplane.quota.local import QUOTA_DIR, LocalLedger, socket_path
from dataplane.quota.local import serve as serve_ledger
from dataplane.readiness import Readiness
from dataplane.routing.candidate import deployment_key
from dataplane.routing.dispatch import Dispatcher
from dataplane.routing.query import NodeContext
from dataplane.snapshot.envelope import load_trust_keys
from dataplane.snapshot.hash_key import API_KEY_HASH_KEY_FILE, decode_hash_keys, read_hash_key_file
from dataplane.snapshot.lkg import LKG_FILE, SNAPSHOT_DIR
from dataplane.snapshot.pin_watch import PinWatcher, warn_if_expired
from dataplane.snapshot.serving import ServingState
from dataplane.snapshot.store import SnapshotStore
from dataplane.snapshot.sync_client import SyncClient, full_jitter
from dataplane.upstream import UpstreamClient
from signalbox.tls import ClientTls

log = logging.getLogger("signalbox.dataplane")

TASK_STOP_SECONDS = 10.0
"""How long stop waits for a cancelled background task before it goes on without it."""


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it, at most ``TASK_STOP_SECONDS``: a task that does not
    end (a cancellation swallowed in a library) is logged by name and left behind, so the
    node's stop never hangs on it. Its failure, if it failed, is logged, not raised."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=TASK_STOP_SECONDS)
    if not done:
        log.error(
            "stopping: task %s did not end within %.0fs of its cancellation",
            task.get_name(),
            TASK_STOP_SECONDS,
        )
    elif not task.cancelled() and task.exception() is not None:
        log.error("stopping: task %s had failed: %r", task.get_name(), task.exception())


class DataPlaneNode:
    """One running node. Use as ``async with``, or ``start()`` / ``stop()``."""

    def __init__(self, settings: NodeSettings, *, governance: Sequence[GovernanceStep] | None = None) -> None:
        """``governance``: steps run before and after the model on every request; None: the
        governance profiles of the snapshot each request runs on (``Governance``)."""
        self.settings = settings
        self._governance: tuple[GovernanceStep, ...] = (
            (Governance(),) if governance is None else tuple(governance)
        )
        self._node_context = NodeContext(
            mode=settings.mode,
            site=settings.scope.site,
            deployment=settings.scope.deployment,
            node_group=settings.scope.node_group,
        )
        self._doors: Doors | None = None
        self._key_task: asyncio.Task[None] | None = None
        self._health = HealthServicer()
        self._readiness = Readiness(
            self._health,
            ("", INFER_SERVICE),
            stopping=lambda: self._stopping,
            store=lambda: self._store,
            evidence=lambda: self._evidence,
        )
        self._http: UpstreamClient | None = None
        self._evidence: EvidenceLog | None = None
        self._spool = Spool(settings.evidence_spool_max_bytes)
        self._store: SnapshotStore | None = None
        self._sync: SyncClient | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._pin_watch: PinWatcher | None = None
        self._pin_task: asyncio.Task[None] | None = None
        self._renewer: CertificateRenewer | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._shipper: EvidenceShipper | None = None
        self._ship_task: asyncio.Task[None] | None = None
        self._quotas: Quotas | None = None
        self._leaser: QuotaLeaser | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._ledger: LocalLedger | None = None
        self._ledger_server: grpc.aio.Server | None = None
        self._dispatcher: Dispatcher | None = None
        self._metrics: NodeMetrics | None = None
        self._tracer: RequestTracer | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    # ---- public surface ----

    @property
    def address(self) -> str:
        """``host:port`` the Infer API listens on (the real port when 0 was asked)."""
        host = self.settings.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @property
    def http_address(self) -> str:
        """``host:port`` of the HTTP front door (the real port when 0 was asked)."""
        if self._doors is None or not self._doors.http_port or self.settings.http_listen is None:
            raise RuntimeError("the HTTP front door is not running")
        host = self.settings.http_listen.rsplit(":", 1)[0]
        return f"{host}:{self._doors.http_port}"

    @property
    def http_accepting(self) -> bool:
        """The HTTP front door takes new connections (False once a stop began)."""
        return self._doors is not None and self._doors.http_accepting

    @property
    def metrics_address(self) -> str:
        """``host:port`` of the Prometheus endpoint (the real port when 0 was asked)."""
        if self._metrics is None or self.settings.metrics_listen is None:
            raise RuntimeError("metrics are off")
        host = self.settings.metrics_listen.rsplit(":", 1)[0]
        return f"{host}:{self._metrics.port}"

    @property
    def port(self) -> int:
        if self._doors is None or not self._doors.port:
            raise RuntimeError("node is not started")
        return self._doors.port

    @property
    def store(self) -> SnapshotStore:
        """The snapshot store: ``.version``, ``.current``, ``.last_rejection``, ``.apply()``."""
        if self._store is None:
            raise RuntimeError("node is not started")
        return self._store

    async def _follow_hash_key(self) -> None:
        """A worker other than 0: the API-key hash key versions worker 0 got on its sync stream
        (and keeps beside its snapshot), taken as soon as they are there or change."""
        path = self.settings.data_dir / SNAPSHOT_DIR / API_KEY_HASH_KEY_FILE
        while True:
            try:
                keys = decode_hash_keys(await asyncio.to_thread(read_hash_key_file, path), str(path))
            except FileNotFoundError:
                keys = None
            except ValueError as exc:
                log.error("API-key hash key versions not taken: %s", exc)
                keys = None
            if keys is not None and self._store is not None:
                await self._store.set_api_key_hash_keys(keys)
            await asyncio.sleep(WORKER_FOLLOW_INTERVAL_S)

    def _durable_evidence_seq(self) -> int:
        return self._evidence.durable_seq if self._evidence is not None else 0

    @property
    def evidence(self) -> EvidenceLog:
        if self._evidence is None:
            raise RuntimeError("node is not started")
        return self._evidence

    @property
    def spool(self) -> Spool:
        """The evidence spool: its size, bound, alarms and refusals (``status()``)."""
        return self._spool

    @property
    def sync(self) -> SyncClient | None:
        """The config-sync client, when a control plane is configured."""
        return self._sync

    @property
    def shipper(self) -> EvidenceShipper | None:
        """Ships the evidence log, when a control plane is configured."""
        return self._shipper

    @property
    def quotas(self) -> Quotas | None:
        """The leased rate limits and budgets, when a control plane is configured."""
        return self._quotas

    @property
    def leaser(self) -> QuotaLeaser | None:
        return self._leaser

    @property
    def renewer(self) -> CertificateRenewer | None:
        """Renews the node certificate, when the node uses its enrolled identity."""
        return self._renewer

    @property
    def identity(self) -> IdentityFiles:
        return IdentityFiles.under(self.settings.data_dir)

    @property
    def ledger(self) -> LocalLedger | None:
        """The node's own quota ledger (worker 0 of an air-gapped node)."""
        return self._ledger

    @property
    def pin_watch(self) -> PinWatcher | None:
        """The watcher of the air-gapped pin file, when the node serves one."""
        return self._pin_watch

    @property
    def stopping(self) -> bool:
        """True once a stop has begun (health is NOT_SERVING, new calls are refused)."""
        return self._stopping

    async def wait_for_version(self, version: int, timeout: float | None = 10.0) -> ServingState:
        """Wait until the node serves ``version`` or a later one."""
        return await self.store.wait_for_version(version, timeout)

    # ---- lifecycle ----

    async def start(self) -> None:
        s = self.settings
        # Refuse a plaintext public listen (or unreadable certificates) before anything starts.
        s.tls.credentials(s.listen)
        sync_tls = None
        if s.control_plane and s.snapshot_file is None:
            sync_tls = await control_plane_tls(s, self.identity)
        trusted = load_trust_keys(s.trust_keys)
        if not trusted:
            log.warning("no trust key configured: this node will refuse every snapshot")
        # Checkpoints are signed with the node key; a node that never enrolled (a pinned
        # air-gapped node) generates it now, as enrollment would, and is certified later.
        signer = await asyncio.to_thread(self.identity.private_key)
        self._evidence = EvidenceLog(
            log_path(s.data_dir, s.node_id, str(s.worker)),
            s.node_id,
            worker=str(s.worker),
            fsync_interval=s.evidence_fsync_interval,
            signer=signer,
            checkpoint_records=s.evidence_checkpoint_records,
            checkpoint_interval=s.evidence_checkpoint_interval,
            segment_bytes=s.evidence_segment_bytes,
            spool=self._spool,
        )
        self._evidence.on_failing = self._readiness.evidence_changed
        await self._evidence.start()
        self._http = UpstreamClient(
            max_connections=s.http_max_connections,
            max_per_origin=s.http_max_per_origin,
            max_idle=s.http_max_keepalive,
        )
        self._store = SnapshotStore(
            trusted=trusted,
            scope=s.scope,
            # Each worker keeps its own last-known-good and high-water mark: two writers of one
            # file could move it back (a slower worker persisting an older version last).
            data_dir=s.data_dir if s.worker == 0 else s.data_dir / WORKERS_DIR / str(s.worker),
            client=self._http,
            allow_expired=s.allow_expired,
            resolve_credential=CredentialScope(
                s.credential_dir if s.credential_dir is not None else s.data_dir / CREDENTIALS_DIR_NAME,
                s.credential_env_prefix,
                s.sealing_key,
            ).resolve,
            reset_high_water_mark=s.reset_high_water_mark,
            on_change=self._on_snapshot,
            # Routes are prepared for where this node really runs, as the pipeline plans them.
            node=self._node_context,
            idle_wait=s.snapshot_idle_wait,
            api_key_hash_keys=s.api_key_hash_keys,
        )
        await self._health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._health.set(INFER_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        if s.snapshot_file is not None:
            self._pin_watch = PinWatcher(
                self._store, s.snapshot_file, interval=s.snapshot_poll_interval, allow_expired=s.allow_expired
            )
            self._pin_watch.prime()
            # A pin that does not verify is an operator error: refuse to start.
            await self._store.load_pinned(s.snapshot_file)
            assert self._store.current is not None
            warn_if_expired(self._store.current, allow_expired=s.allow_expired, now=time.time())
        else:
            try:
                await self._store.load_last_known_good()
            except SnapshotFileInvalid as exc:
                # Fail closed: UNAVAILABLE until the control plane sends a valid snapshot.
                log.error("last-known-good not served: %s", exc)
            if s.worker > 0 and s.control_plane:
                # One sync stream per node: worker 0 holds it and persists what it applies;
                # the other workers follow that file as an air-gapped node follows its pin
                # (every signature and the high-water mark checked again, their own mark).
                self._pin_watch = PinWatcher(
                    self._store,
                    s.data_dir / SNAPSHOT_DIR / LKG_FILE,
                    interval=min(s.snapshot_poll_interval, WORKER_FOLLOW_INTERVAL_S),
                    allow_expired=s.allow_expired,
                )
        self._quotas = Quotas(lease_interval=s.quota_lease_interval)
        if self._local_quota and s.worker == 0:
            # An air-gapped node leases from itself: worker 0 holds the node's ledger (its
            # budgets persisted in the data dir), every worker leases over its unix socket.
            # Before the port opens: the other workers start once worker 0 listens.
            store = self._store
            self._ledger = LocalLedger(
                lambda: store.current.config if store.current is not None else None,
                s.data_dir / QUOTA_DIR,
                spent=lambda since: spent_since(s.data_dir, since),
            )
            await asyncio.to_thread(self._ledger.load)
            self._ledger_server = await serve_ledger(self._ledger, s.node_id, s.data_dir)
        await self._start_server()
        if s.control_plane and s.snapshot_file is None and s.worker == 0:
            self._sync = SyncClient(
                s.control_plane,
                self._store,
                node_id=s.node_id,
                mode=s.mode,
                scope=s.scope,
                backoff_base=s.sync_backoff_base,
                backoff_cap=s.sync_backoff_cap,
                tls=sync_tls,
                heartbeat_interval=s.sync_heartbeat_interval,
                max_message_bytes=s.sync_max_message_bytes,
            )
            self._sync_task = asyncio.get_running_loop().create_task(self._sync.run())
        if s.control_plane and s.snapshot_file is None:
            # Evidence goes to the same node port, as the same certified node (each worker
            # its own chain).
            assert sync_tls is not None
            self._shipper = EvidenceShipper(
                s.control_plane,
                log_path(s.data_dir, s.node_id, str(s.worker)),
                node_id=s.node_id,
                worker=str(s.worker),
                tls=sync_tls,
                backoff=functools.partial(full_jitter, base=s.sync_backoff_base, cap=s.sync_backoff_cap),
                interval=s.evidence_ship_interval,
                spool=self._spool,
                durable_seq=self._durable_evidence_seq,
            )
            self._ship_task = asyncio.get_running_loop().create_task(self._shipper.run())
            if sync_tls == self.identity.client_tls() and self._sync is not None:
                self._renewer = CertificateRenewer(
                    self.identity, target=s.control_plane, node_id=s.node_id, on_renewed=self._sync.reconnect
                )
                self._renew_task = asyncio.get_running_loop().create_task(self._renewer.run())
        self._leaser = QuotaLeaser(
            self._quotas,
            f"unix:{socket_path(s.data_dir).absolute()}" if self._local_quota else str(s.control_plane),
            sync_tls if sync_tls is not None and not self._local_quota else ClientTls(insecure=True),
            interval=s.quota_lease_interval,
            holder=f"{s.node_id}/{s.worker}",
        )
        self._lease_task = asyncio.get_running_loop().create_task(self._leaser.run())
        if self._pin_watch is not None:
            self._pin_task = asyncio.get_running_loop().create_task(self._pin_watch.run())
        if s.worker > 0 and s.control_plane and s.snapshot_file is None and s.api_key_hash_keys is None:
            self._key_task = asyncio.get_running_loop().create_task(self._follow_hash_key())
        if self._store.current is not None:
            await self._readiness.push()
        log.info(
            "node %s (%s) listening on %s, snapshot %s",
            s.node_id,
            s.mode.value,
            self.address,
            self._store.version or "none",
        )

    @property
    def _local_quota(self) -> bool:
        """Quota leased from the node's own ledger (``dataplane.quota.local``): no control plane."""
        return self.settings.snapshot_file is not None or not self.settings.control_plane

    async def _start_server(self) -> None:
        assert self._store is not None
        assert self._evidence is not None
        s = self.settings
        dispatcher = self._dispatcher = Dispatcher(max_retry_after_s=s.max_retry_after)
        # Opt-in with the standard OTEL_* variables; None (and nothing imported) otherwise.
        self._tracer = RequestTracer.from_environment(node_id=s.node_id, worker=s.worker)
        if s.metrics_listen is not None:
            state = NodeState(
                store=lambda: self._store,
                dispatcher=lambda: self._dispatcher,
                evidence=lambda: self._evidence,
                spool=self._spool,
                shipper=lambda: self._shipper,
                sync=lambda: self._sync,
                fronts=lambda: self._doors.fronts if self._doors is not None else (),
                http=lambda: self._doors.http if self._doors is not None else None,
                counting=lambda: self._doors.counting if self._doors is not None else None,
            )
            self._metrics = NodeMetrics(state, worker=s.worker, workers=s.workers, data_dir=s.data_dir)
            await self._metrics.start(s.metrics_listen)
        pipeline = Pipeline(
            self._store,
            dispatcher,
            self._evidence,
            governance=self._governance,
            spool=self._spool,
            quotas=self._quotas,
            metrics=self._metrics.requests if self._metrics is not None else None,
            tracer=self._tracer,
            default_deadline=s.default_timeout,
            stream_deadline=s.stream_timeout,
        )
        self._doors = Doors(s, pipeline, self._health, self._readiness.reason)
        await self._doors.start()

    async def _on_snapshot(self, state: ServingState) -> None:
        # What the node learnt of deployments, models and tenants the snapshot removed goes.
        models = state.config.models.values()
        if self._dispatcher is not None:
            self._dispatcher.retain({deployment_key(d) for m in models for d in m.deployments})
        if self._metrics is not None:
            profiles = state.config.governance.values()
            rules = {r.name for p in profiles for r in (*p.input_rules, *p.output_rules)}
            self._metrics.requests.retain(state.config.tenants, {m.alias for m in models}, rules)
        if not self._stopping:
            await self._readiness.push()

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop; safe to call more than once."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            grace = self.settings.drain_seconds if grace is None else grace
            self._readiness.close()
            await self._readiness.push()  # NOT_SERVING: stopping
            # Not the shipper: it sends the evidence of the drained requests too (below).
            # Not the leaser: the drained requests lease as any other (below).
            for task in (self._renew_task, self._sync_task, self._key_task):
                if task is not None:
                    await _cancel(task)
            if self._pin_watch is not None:
                # Not cancelled: a pin being applied finishes (persisted and published) first.
                self._pin_watch.close()
            if self._pin_task is not None:
                await self._pin_task
            drained_by = time.monotonic() + grace
            if self._doors is not None:
                await self._doors.stop(grace)
            if self._dispatcher is not None:
                # The drained requests' mirrors finish too (each within its caller's deadline,
                # all within the grace): their upstreams have them and bill them; closing the
                # HTTP client under them recorded a server error that cost nothing.
                try:
                    async with asyncio.timeout(max(0.0, drained_by - time.monotonic())):
                        await self._dispatcher.drain_shadows()
                except TimeoutError:
                    # Those still running are cancelled: each is recorded (``cancelled``, its
                    # usage estimated as a cut attempt's) and charged before the log closes.
                    await self._dispatcher.aclose()
            if self._leaser is not None and self._lease_task is not None:
                # Drained and settled: the leaser's last round tells the ledger what the drain
                # spent past what this worker held (a mirror's charge) and hands back the rest.
                self._leaser.close()
                await asyncio.wait({self._lease_task}, timeout=TASK_STOP_SECONDS)
                await _cancel(self._lease_task)
            if self._ledger is not None and self._leaser is not None:
                # The other workers lease from it while they drain, and then once more.
                late = await self._ledger.last_leases(
                    max(0.0, drained_by - time.monotonic()) + 2 * self._leaser.call_timeout
                )
                if late:
                    log.warning(
                        "quota budgets: no last lease from %s before the ledger stopped; what they "
                        "held counts as spent, what they spent past it is in their evidence only",
                        ", ".join(late),
                    )
            if self._ledger_server is not None:
                await self._ledger_server.stop(grace)
            if self._ledger is not None:
                # What was granted and not yet on disk (a Lease call given up before its
                # answer) counts as spent on the next start: the safe side.
                try:
                    await self._ledger.persist()
                except OSError as exc:
                    log.error("quota budgets: not written at stop: %s", exc)
            if self._store is not None:
                await self._store.aclose()
            if self._http is not None:
                await self._http.aclose()
            if self._evidence is not None:
                await self._evidence.aclose()  # signs the last checkpoint
                await self._drain_evidence(self._evidence, self.settings.evidence_drain if grace > 0 else 0)
            if self._tracer is not None:
                # The spans of the drained requests leave before the process does.
                await asyncio.to_thread(self._tracer.shutdown)
            if self._metrics is not None:
                # Last: a scrape during the drain still sees the node.
                await self._metrics.stop()
        finally:
            if self._ship_task is not None and not self._ship_task.done():
                await _cancel(self._ship_task)  # a stop cut short above leaves nothing running
            self._stopped.set()

    async def _drain_evidence(self, evidence: EvidenceLog, seconds: float) -> None:
        """Give the shipper ``seconds`` to send what the control plane lacks, then stop it:
        a node scaled away with its disk must not take unshipped evidence with it."""
        shipper, task = self._shipper, self._ship_task
        if shipper is None or task is None:
            return
        head, signed = evidence.head.seq, evidence.signed_size
        if seconds > 0 and not await shipper.drain(head, signed, seconds):
            log.warning(
                "stopping: evidence %s not all acknowledged (records up to seq %d of %d, checkpoint "
                "of %d of %d); the rest stays in %s and ships when the node starts again",
                shipper.chain_id,
                shipper.status.shipped_seq,
                head,
                shipper.status.proven_seq,
                signed,
                self.settings.data_dir,
            )
        await _cancel(task)

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop(0)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve(self, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Run until one of ``signals`` arrives, then drain and stop."""
        loop = asyncio.get_running_loop()
        requested = asyncio.Event()
        for sig in signals:
            loop.add_signal_handler(sig, requested.set)
        try:
            await requested.wait()
            log.info("stopping: draining for up to %.1fs", self.settings.drain_seconds)
            # Handled until stopped: it often comes twice (systemd and a terminal signal every
            # process, the supervisor passes it on), and by default the second ends the drain.
            for sig in signals:
                loop.add_signal_handler(sig, log.info, "stopping: already draining (%s)", sig.name)
            await self.stop()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
