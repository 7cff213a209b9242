"""The control-plane process: database, signing key, snapshot broker, gRPC server.

``ControlPlane`` is an async context manager::

    async with ControlPlane(ControlPlaneSettings(listen="127.0.0.1:0", data_dir=path)) as cp:
        print(cp.address)  # host:port actually bound

On start it (1) connects to ``database_url`` or starts embedded PostgreSQL under
the data dir, (2) runs ``alembic upgrade head``, (3) unseals (or on first start
generates) the signing key and writes ``<data_dir>/trust-key.pub``, (4) publishes
a first snapshot when there is none (and later re-issues it before it expires), (5) starts LISTENing for new snapshots, and
(6) unseals (or generates) the node CA and writes ``<data_dir>/node-ca.pem``, and (7)
serves AdminService, NodeEnrollmentService and gRPC health on ``listen``, and
ConfigSyncService and NodeIdentityService on ``node_listen`` with mutual TLS against
the node CA (its server certificate issued by that CA at start). Only ``tls.insecure``
makes the node port plaintext (development; logged loudly).
``stop`` ends sync streams cleanly, drains in-flight calls, and releases everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from controlplane.api.admin import AdminServicer
from controlplane.api.audit_limit import UnauthenticatedAuditLimit
from controlplane.api.decoding import ENROLLMENT_SERVICES, NODE_PORT_SERVICES, DecodingInterceptor
from controlplane.api.evidence import EvidenceServicer
from controlplane.api.identity import NodeEnrollmentServicer, NodeIdentityServicer
from controlplane.api.interceptor import AdminInterceptor
from controlplane.api.node_auth import NodeAuthenticator
from controlplane.api.quota import QuotaServicer
from controlplane.api.sync import ConfigSyncServicer
from controlplane.api_key_hash import ApiKeyHasher, HashKeyRing, LiveHashKeys
from controlplane.connections import connection_caps, open_files_limit, server_options
from controlplane.db.embedded import EMBEDDED_DIR, EmbeddedPostgres, start_embedded
from controlplane.db.migrate import upgrade_head
from controlplane.db.session import create_engine, database_now, dispose, normalize_url, session_factory
from controlplane.errors import ControlPlaneError
from controlplane.evidence.checkpoints import CheckpointVerifier, verify_node_checkpoint
from controlplane.evidence.errors import PruneBusy
from controlplane.evidence.export import EvidenceExporter
from controlplane.evidence.imports import EvidenceImporter
from controlplane.evidence.ingest import EvidenceIngest
from controlplane.evidence.partitions import Partitions
from controlplane.evidence.queries import EvidenceQueries
from controlplane.evidence.retention import EvidenceRetention
from controlplane.identity.ca import NodeCaKey, ensure_node_ca
from controlplane.keys import Keyring, Signer, ensure_signing_key, load_kek
from controlplane.metrics import ControlPlaneMetrics
from controlplane.ports import BACKEND, add_node_port, front_of, listen_on
from controlplane.quota import QuotaLedger
from controlplane.repositories import signing_keys as signing_key_repo
from controlplane.services.admin import AdminService
from controlplane.services.base import UnitOfWork
from controlplane.services.callers import CallerIdentityService
from controlplane.services.governance import GovernanceService
from controlplane.services.groups import NodeGroupService
from controlplane.services.identity import IdentityService
from controlplane.services.imports import ImportService
from controlplane.services.keys import ApiKeyService
from controlplane.services.limits import LimitsService
from controlplane.services.models import ModelService
from controlplane.services.nodes import NodeService
from controlplane.services.policies import PolicyService
from controlplane.services.providers import ProviderService
from controlplane.services.rollback import RollbackService
from controlplane.services.signing_keys import SigningKeyService
from controlplane.services.snapshots import SnapshotService
from controlplane.services.tenants import TenantService
from controlplane.settings import (
    ControlPlaneSettings as ControlPlaneSettings,  # re-exported: ControlPlane(settings)
)
from controlplane.snapshots.broker import Latest, SnapshotBroker
from controlplane.snapshots.publish import Publication, SnapshotPublisher
from dataplane.connection_front import FDS_PER_CONNECTION, ConnectionFront
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import (
    identity_pb2,
    identity_pb2_grpc,
    quota_pb2,
    quota_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
)
from signalbox.api.evidence.v1 import evidence_pb2, evidence_pb2_grpc
from signalbox.tls import add_port
from signalbox.wallclock import utc_now

log = logging.getLogger(__name__)

TRUST_KEY_FILE = "trust-key.pub"
NODE_CA_FILE = "node-ca.pem"
ADMIN_LISTENER_SERVICES = (
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    identity_pb2.DESCRIPTOR.services_by_name["NodeEnrollmentService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)
"""What the admin listener serves, as its reflection lists it."""


def embedded_url(data_dir: Path) -> tuple[EmbeddedPostgres, str]:
    """Start embedded PostgreSQL under ``data_dir`` and return it with its URL. Blocking."""
    server = start_embedded((data_dir / EMBEDDED_DIR).resolve())
    return server, server.url()


class ControlPlane:
    """A running control plane; use as ``async with``."""

    def __init__(
        self,
        settings: ControlPlaneSettings,
        *,
        verify_checkpoint_signature: CheckpointVerifier = verify_node_checkpoint,
    ) -> None:
        self.settings = settings
        self._verify_checkpoint_signature = verify_checkpoint_signature
        """How shipped checkpoint notes are checked against the node's certified key; without
        one, the evidence port is not served (nothing may skip the signature check)."""
        self.evidence: EvidenceIngest | None = None
        self.retention: EvidenceRetention | None = None
        self.address = ""
        """host:port the gRPC server is bound to (set once started)."""
        self.database_url = ""
        self.signer: Signer | None = None
        """The active signing key at start (rotation changes the keyring's keys, not this)."""
        self.keyring: Keyring | None = None
        self.api_key_hasher: ApiKeyHasher | None = None  # the active version at start
        self._embedded: EmbeddedPostgres | None = None
        self._engine: AsyncEngine | None = None
        self._server: grpc.aio.Server | None = None
        self._node_server: grpc.aio.Server | None = None
        self.node_address = ""
        """host:port the node port (config sync, renewal) is bound to."""
        self.metrics: ControlPlaneMetrics | None = None
        self.metrics_address = ""
        """host:port of the Prometheus endpoint, when metrics are on."""
        self.node_ca: NodeCaKey | None = None
        self._started_at: datetime | None = None
        """The database's clock at start: what the node port's certificate is dated by."""
        self.identities: IdentityService | None = None
        self.groups: NodeGroupService | None = None
        self._health = HealthServicer()
        self.broker: SnapshotBroker | None = None
        self.sync: ConfigSyncServicer | None = None
        self.shipping: EvidenceServicer | None = None
        self.admin: AdminService | None = None
        self.quota: QuotaLedger | None = None
        self.limits: LimitsService | None = None
        self._background: list[asyncio.Task[None]] = []
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._trust_key_id = ""
        """Key id of the public key in ``trust-key.pub``."""
        self._key_file_tasks: set[asyncio.Task[None]] = set()
        self._interceptor: AdminInterceptor | None = None
        self._enroll_refusals: UnauthenticatedAuditLimit | None = None
        self._served: list[str] = []
        """The services grpc health reports on (all of them NOT_SERVING while the database
        is unreachable)."""
        self._fronts: list[ConnectionFront] = []
        """Each port's, unless the port has none (``dataplane.connection_front``)."""

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def trust_key_path(self) -> Path:
        return self.settings.data_dir / TRUST_KEY_FILE

    @property
    def node_ca_path(self) -> Path:
        return self.settings.data_dir / NODE_CA_FILE

    async def __aenter__(self) -> ControlPlane:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        s = self.settings
        if s.scope.node_group:
            raise ValueError(
                "scope.node_group: a control plane serves every node group; create groups with "
                "`signalbox admin group create` (nodes name theirs with --node-group)"
            )
        # Refuse a plaintext public listen (or unreadable certificates) before anything starts.
        s.tls.credentials(s.listen)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        if s.database_url:
            self.database_url = normalize_url(s.database_url)
        else:
            self._embedded, self.database_url = await asyncio.to_thread(embedded_url, s.data_dir)
        await asyncio.to_thread(upgrade_head, self.database_url)

        self._engine = create_engine(self.database_url)
        sessions = session_factory(self._engine)
        kek = load_kek(kek_b64=s.kek, kek_file=s.kek_file, data_dir=s.data_dir)
        async with sessions() as session, session.begin():
            self.signer = await ensure_signing_key(session, kek)
        async with sessions() as session, session.begin():
            self.node_ca = await ensure_node_ca(session, kek)
            # The node port's certificate is issued below, dated by the database's clock too.
            self._started_at = await database_now(session, utc_now, "the node port's certificate")
        hash_keys = HashKeyRing(kek)  # services ask it for the active version each time
        async with sessions() as session, session.begin():
            self.api_key_hasher = await hash_keys.ensure(session)
        self._write_public(self.trust_key_path, self.signer.public_pem())
        self._trust_key_id = self.signer.key_id
        self._write_public(self.node_ca_path, self.node_ca.pem)

        self.keyring = Keyring(kek)
        publisher = SnapshotPublisher(self.keyring, s.snapshot_ttl, s.snapshot_retention)
        uow = UnitOfWork(sessions, publisher)
        snapshots = SnapshotService(uow)
        self.groups = groups = NodeGroupService(uow, stale_after=s.node_stale_after)
        # Dry runs reuse what the publisher compiled for each version it committed.
        uow.after_commit.append(snapshots.remember)
        if s.scope.deployment or s.scope.site:
            await groups.seed_default(deployment=s.scope.deployment, site=s.scope.site)
        await snapshots.reissue_if_aging()

        # LISTEN needs a plain libpq URL.
        self.broker = SnapshotBroker(
            sessions,
            self.database_url.replace("postgresql+psycopg://", "postgresql://", 1),
            debounce=s.debounce,
        )
        # Before start: the first load already tells which key signs now.
        self._sessions = sessions
        self.broker.on_update.append(self._follow_active_key)
        await self.broker.start()
        broker = self.broker

        # NOTIFY brings it back too, but a local offer saves a round trip and reading the
        # envelope (megabytes at fleet size) back from the database.
        def offer(publication: Publication) -> None:
            # Each offer kicks the broker; a change that published nothing needs no reload.
            for group, published in publication.published.items():
                broker.offer(group, published.version, published.sha256, published.envelope, published.delta)

        uow.after_commit.append(offer)

        nodes = NodeService(sessions, stale_after=s.node_stale_after)
        self.admin = AdminService(sessions)
        self._enroll_refusals = UnauthenticatedAuditLimit(
            self._enroll_refusals_suppressed,
            rows=s.unauthenticated_audit_rows,
            window=s.unauthenticated_audit_window,
        )
        self.identities = IdentityService(
            sessions,
            self.node_ca,
            s.node_cert_ttl,
            self.admin.audit,
            admit_refusal=self._enroll_refusals.admit,
        )
        node_auth = NodeAuthenticator(self.identities, require_certificate=not s.tls.insecure)
        live_keys = LiveHashKeys(hash_keys, sessions)
        self.sync = ConfigSyncServicer(self.broker, nodes, node_auth, api_key_hash_keys=live_keys)
        partitions = Partitions(sessions, lock_timeout=s.evidence_lock_timeout)
        self.retention = EvidenceRetention(
            sessions, self.keyring, partitions, lock_timeout=s.evidence_retention_lock_timeout
        )
        self.evidence = EvidenceIngest(
            sessions,
            self._verify_checkpoint_signature,
            workers=s.evidence_workers,
            lock_timeout=s.evidence_lock_timeout,
            partitions=partitions,
            keyring=self.keyring,
        )
        self.limits = LimitsService(uow)
        admin_servicer = AdminServicer(
            tenants=TenantService(uow),
            keys=ApiKeyService(uow, hash_keys),
            providers=ProviderService(uow),
            models=ModelService(uow),
            policies=PolicyService(uow),
            nodes=nodes,
            snapshots=snapshots,
            rollback=RollbackService(uow),
            signing_keys=SigningKeyService(uow),
            identities=self.identities,
            groups=groups,
            imports=ImportService(uow, hash_keys),
            evidence=EvidenceQueries(sessions, stale_after=s.evidence_stale_after),
            exporter=EvidenceExporter(
                sessions, self.keyring, self.node_ca.pem.decode(), max_records=s.max_export_records
            ),
            callers=CallerIdentityService(uow),
            retention=self.retention,
            importer=EvidenceImporter(sessions, self.evidence),
            limits=self.limits,
            admin=self.admin,
            governance=GovernanceService(uow),
        )
        self._interceptor = AdminInterceptor(
            self.admin,
            unauthenticated_rows=s.unauthenticated_audit_rows,
            unauthenticated_window=s.unauthenticated_audit_window,
        )
        fronted = s.max_connections_per_peer != 0 or s.node_max_connections_per_peer != 0
        caps = connection_caps(
            open_files_limit(),
            admin=s.max_connections,
            node=s.node_max_connections,
            fds_per_connection=FDS_PER_CONNECTION if fronted else 1,
        )
        admin_front = front_of("admin", caps.admin, s.max_connections_per_peer)
        node_front = front_of("node", caps.node, s.node_max_connections_per_peer)
        self._fronts = [f for f in (admin_front, node_front) if f is not None]
        self._server = grpc.aio.server(
            interceptors=[DecodingInterceptor(ENROLLMENT_SERVICES), self._interceptor],
            options=server_options(
                s.max_message_bytes,
                caps.admin,
                s.connection_idle_timeout,
                (s.connection_max_age, s.connection_age_grace),
            ),
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin_servicer, self._server)
        identity_pb2_grpc.add_NodeEnrollmentServiceServicer_to_server(
            NodeEnrollmentServicer(self.identities), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        # Listing the admin API needs an admin identity, as calling it does (api/interceptor.py).
        reflection.enable_server_reflection(ADMIN_LISTENER_SERVICES, self._server)
        port = add_port(self._server, s.listen, s.tls, bind=BACKEND if admin_front else None)
        if port == 0:
            raise OSError(f"cannot listen on {s.listen} (--listen): in use, or not an address of this host")

        # grpc cannot make client certificates optional on one port: nodes get their own.
        self._node_server = grpc.aio.server(
            interceptors=[DecodingInterceptor(NODE_PORT_SERVICES)],
            options=server_options(
                s.max_message_bytes,
                caps.node,
                s.connection_idle_timeout,
                (s.node_connection_max_age, s.connection_age_grace),
            ),
        )
        sync_pb2_grpc.add_ConfigSyncServiceServicer_to_server(self.sync, self._node_server)
        identity_pb2_grpc.add_NodeIdentityServiceServicer_to_server(
            NodeIdentityServicer(self.identities, node_auth), self._node_server
        )
        self.shipping = shipping = EvidenceServicer(self.evidence, node_auth, sessions)
        self.broker.on_revoked.append(shipping.revoked)
        evidence_pb2_grpc.add_EvidenceServiceServicer_to_server(shipping, self._node_server)
        self.quota = QuotaLedger(sessions, burst_seconds=s.limit_burst_seconds)
        quota_pb2_grpc.add_QuotaServiceServicer_to_server(
            QuotaServicer(self.quota, node_auth), self._node_server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._node_server)
        assert self.node_ca is not None
        node_port = add_node_port(
            self._node_server, s, self.node_ca, self._started_at, bind=BACKEND if node_front else None
        )
        if s.metrics_listen is not None:
            self.metrics = ControlPlaneMetrics(nodes)
            self._interceptor.metrics = self.sync.metrics = shipping.metrics = self.metrics
            refused = self.metrics.connections_refused
            for front in self._fronts:
                front.on_refused = lambda port, why: refused.labels(port, why).inc()
            await self.metrics.endpoint.start(listen=s.metrics_listen)
            host = s.metrics_listen.rsplit(":", 1)[0]
            self.metrics_address = f"{host}:{self.metrics.endpoint.port}"
        await self._server.start()
        await self._node_server.start()
        self.address = await listen_on(admin_front, s.listen, port, "--listen")
        self.node_address = await listen_on(node_front, s.node_listen, node_port, "--node-listen")
        self._background = [
            asyncio.create_task(
                self._reissue_loop(snapshots, s.reissue_check_interval), name="snapshot-reissue"
            ),
            asyncio.create_task(self.sync.heartbeat(s.node_heartbeat_interval), name="node-heartbeat"),
        ]
        if s.evidence_retention_days > 0:
            self._background.append(
                asyncio.create_task(
                    self._retention_loop(
                        self.retention,
                        timedelta(days=s.evidence_retention_days),
                        s.evidence_retention_interval,
                    ),
                    name="evidence-retention",
                )
            )
        self._served = [
            "",
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            sync_pb2.DESCRIPTOR.services_by_name["ConfigSyncService"].full_name,
            identity_pb2.DESCRIPTOR.services_by_name["NodeEnrollmentService"].full_name,
            identity_pb2.DESCRIPTOR.services_by_name["NodeIdentityService"].full_name,
            quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name,
            *(
                [evidence_pb2.DESCRIPTOR.services_by_name["EvidenceService"].full_name]
                if self.evidence
                else []
            ),
        ]
        for service in self._served:
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.broker.on_database.append(self._database_reachable)
        self.broker.on_database.append(self._record_disconnects)
        log.info(
            "control plane serving on %s (%s, signing key %s), nodes on %s (%s)",
            self.address,
            "TLS" if s.tls.enabled else "plaintext",
            self.signer.key_id,
            self.node_address,
            "PLAINTEXT" if s.tls.insecure else "mutual TLS",
        )

    async def _database_reachable(self, reachable: bool) -> None:
        """Health follows the database: NOT_SERVING while it cannot be reached, so probes and
        load balancers send admins and nodes to a replica that can serve them meanwhile."""
        if reachable:
            log.info("the database is reachable again: serving")
        else:
            log.warning("the database is unreachable: health says NOT_SERVING until it is back")
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if reachable
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in self._served:
            await self._health.set(service, status)

    async def _record_disconnects(self, reachable: bool) -> None:
        """The database answers again: record the nodes whose streams ended meanwhile."""
        if reachable and self.sync is not None:
            await self.sync.disconnects.retry()

    async def _enroll_refusals_suppressed(self, peer: str, count: int) -> None:
        assert self.admin is not None
        await self.admin.audit(
            actor="anonymous",
            method="Enroll",
            target=f"peer={peer}",
            result="UNAUTHENTICATED",
            detail=f"{count} more refused enrollments from {peer} suppressed",
        )

    async def _reissue_loop(self, snapshots: SnapshotService, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await snapshots.reissue_if_aging()
            except Exception:
                # Keep serving; the next round retries. Loud, because nodes will
                # refuse the newest snapshot once it expires.
                log.exception("could not re-issue the snapshot before its expiry")

    @staticmethod
    async def _retention_loop(retention: EvidenceRetention, keep: timedelta, interval: float) -> None:
        while True:
            try:
                result = await retention.prune_older_than(keep, datetime.now(UTC))
                if result.partitions:
                    log.info(
                        "evidence retention dropped %s (%d chains stated)",
                        ", ".join(result.partitions),
                        len(result.statements),
                    )
            except PruneBusy as exc:
                # A lock held past the lock timeout (a long export, say): the next round retries.
                log.warning("evidence retention could not prune, retrying next round: %s", exc)
            except ControlPlaneError as exc:
                # Keep serving and keep the records: the next round retries. A refusal (a
                # chain whose old records are not its prefix) or a step the database refused
                # (a partition the role does not own) needs an operator: the message says which.
                log.error("evidence retention could not prune: %s", exc)
            except Exception:
                log.exception("evidence retention could not prune")
            await asyncio.sleep(interval)

    def _follow_active_key(self, latest: Latest) -> None:
        """Keep ``<data_dir>/trust-key.pub`` the key that signs now: after a rotation made
        through any replica, the file operators hand new nodes as ``--trust-key`` names the
        active key, not one that may be revoked next."""
        if not latest.envelope.signatures:
            return
        key_id = latest.envelope.signatures[0].key_id  # the active key signs first
        if key_id == self._trust_key_id:
            return
        self._trust_key_id = key_id
        task = asyncio.create_task(self._write_active_key(key_id), name="trust-key-file")
        self._key_file_tasks.add(task)
        task.add_done_callback(self._key_file_tasks.discard)

    async def _write_active_key(self, key_id: str) -> None:
        assert self._sessions is not None
        try:
            async with self._sessions() as session:
                row = await signing_key_repo.get(session, key_id)
            if row is None:
                return
            pem = Ed25519PublicKey.from_public_bytes(bytes(row.public_key)).public_bytes(
                Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
            )
            await asyncio.to_thread(self._write_public, self.trust_key_path, pem)
            log.info("trust key file now holds the active signing key %s", key_id)
        except Exception:
            log.exception("could not write the active signing key to %s", self.trust_key_path)

    @staticmethod
    def _write_public(path: Path, data: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    async def stop(self, grace: float | None = None) -> None:
        """End sync streams, drain in-flight calls, release the database. Idempotent."""
        with contextlib.suppress(Exception):
            await self._health.enter_graceful_shutdown()
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background = []
        if self.broker is not None:
            # Ends every sync stream with OK, so nodes reconnect (elsewhere) at once.
            await self.broker.close()
        if self._key_file_tasks:  # they read the database: before the engine goes
            await asyncio.gather(*self._key_file_tasks, return_exceptions=True)
        # Both ports drain at once: the grace is the whole stop's, not each port's.
        grace = self.settings.drain_grace if grace is None else grace
        for front in self._fronts:
            front.stop_accepting()
        await asyncio.gather(*(s.stop(grace) for s in (self._node_server, self._server) if s is not None))
        self._server = self._node_server = None
        # The servers closed their connections, and so their clients': none is left but
        # one still being opened.
        await asyncio.gather(*(front.close() for front in self._fronts))
        self._fronts = []
        if self.sync is not None:
            await self.sync.drain()
        if self.evidence is not None:
            await asyncio.to_thread(self.evidence.close)
            self.evidence = None
        if self._interceptor is not None:
            await self._interceptor.close()
            self._interceptor = None
        if self._enroll_refusals is not None:
            await self._enroll_refusals.close()
            self._enroll_refusals = None
        if self.metrics is not None:
            # Before the database: a scrape reads the fleet from it.
            await self.metrics.endpoint.stop()
            self.metrics = None
        if self._engine is not None:
            await dispose(self._engine, max(grace, 1.0))
            self._engine = None
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
            self._embedded = None

    async def wait(self) -> None:
        """Until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()
