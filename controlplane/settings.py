"""How to run a control plane: ``ControlPlaneSettings`` (the CLI's flags, as one value)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from controlplane.connections import (
    AGE_GRACE_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_AGE_S,
    DEFAULT_NODE_MAX_AGE_S,
)
from controlplane.evidence.ingest import DEFAULT_LOCK_TIMEOUT
from controlplane.evidence.queries import DEFAULT_STALE_AFTER
from controlplane.evidence.retention import DEFAULT_LOCK_TIMEOUT as DEFAULT_RETENTION_LOCK_TIMEOUT
from controlplane.quota import DEFAULT_BURST_SECONDS
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.tls import ServerTls


@dataclass(frozen=True, slots=True)
class ControlPlaneSettings:
    """How to run a control plane."""

    listen: str = "127.0.0.1:7700"
    """host:port to serve gRPC on; port 0 picks a free one (see ``ControlPlane.address``)."""
    tls: ServerTls = field(default_factory=ServerTls)
    """Certificate, key and client CA; plaintext only on loopback or with ``insecure``
    (which also makes the node port plaintext)."""
    node_listen: str = "127.0.0.1:7703"
    """host:port of config sync and certificate renewal, mutual TLS with node certificates."""
    metrics_listen: str | None = None
    """host:port of the Prometheus endpoint (``/metrics``); None: metrics off."""
    node_advertise_names: tuple[str, ...] = ()
    """Extra DNS names or addresses nodes reach the node port by (SANs of its certificate)."""
    node_cert_ttl: timedelta = timedelta(days=30)
    """Lifetime of node certificates; nodes renew at two thirds of it."""
    database_url: str | None = None
    """PostgreSQL URL; None starts embedded PostgreSQL in ``<data_dir>/postgres``."""
    data_dir: Path = Path("var/controlplane")
    """Holds the trust key, the generated KEK (if no other source) and embedded PostgreSQL."""
    kek: str | None = field(default=None, repr=False)
    """Base64 of the 32-byte key-encryption key (``SIGNALBOX_KEK``)."""
    kek_file: Path | None = None
    """File holding the KEK (``SIGNALBOX_KEK_FILE``); else ``<data_dir>/kek`` is generated."""
    snapshot_ttl: timedelta = timedelta(days=30)
    """How long a snapshot stays valid after it is created."""
    snapshot_retention: int = 100
    """Newest snapshot versions kept; older ones are pruned unless a node runs them or
    they were exported (at least 1)."""
    scope: snapshot_pb2.Scope = field(default_factory=snapshot_pb2.Scope)
    """Deployment and site of the ``default`` node group, written into it at start when set
    (``--scope-*``; ``signalbox admin group update default`` is the lasting way). A node
    group cannot be given here: groups are managed through the admin API."""
    debounce: float = 0.05
    """Seconds to gather a burst of changes into one push."""
    drain_grace: float = 5.0
    """Seconds in-flight calls get to finish on stop."""
    node_heartbeat_interval: float = 30.0
    """Seconds between updates of ``last_seen`` for nodes with an open sync stream."""
    node_stale_after: float = 60.0
    """Seconds without a Hello, ACK, NACK or heartbeat after which ``node list`` shows a
    node as STALE (nodes send a heartbeat every 15 s by default)."""
    max_message_bytes: int = 64 * 1024 * 1024
    """Largest gRPC message sent or received (a snapshot travels as one message); nodes
    have their own receive limit and NACK a snapshot above it."""
    reissue_check_interval: float = 60.0
    """Seconds between checks whether the newest snapshot is past half its lifetime
    (then the unchanged config is re-issued as a new version before it expires)."""
    unauthenticated_audit_rows: int = 20
    """Audit rows per peer address and window for admin calls without a valid token (and for
    refused enrollments);
    the rest of the window's calls become one summary row."""
    unauthenticated_audit_window: float = 60.0
    """Seconds of that window."""
    evidence_workers: int = 1
    """Processes that parse and hash large shipped evidence batches (0: on the event loop)."""
    evidence_lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    """Seconds a shipped batch waits for a lock (its chain's row, held by another session)
    before it is refused UNAVAILABLE and resent by the node."""
    max_export_records: int = 1_000_000
    """The most records one Evidence Pack may hold; a larger export is refused (RESOURCE_EXHAUSTED)."""
    evidence_stale_after: float = DEFAULT_STALE_AFTER
    """Seconds without a batch after which ``admin evidence chains`` shows a chain stale."""
    evidence_retention_days: float = 0.0
    """Prune evidence partitions whose month ended longer ago than this (0: never on a timer;
    ``admin evidence prune`` still does it on demand)."""
    evidence_retention_interval: float = 3600.0
    """Seconds between two retention rounds (the first runs at start)."""
    evidence_retention_lock_timeout: float = DEFAULT_RETENTION_LOCK_TIMEOUT
    """Seconds a prune waits for any one lock (its DROP's on ``evidence_records``, held by a
    long export or query) before it gives up, nothing pruned: ingest, queued behind the
    prune's request, is held up at most this long (the timer retries next round)."""
    limit_burst_seconds: float = DEFAULT_BURST_SECONDS
    """A rate limit's bucket holds this many seconds of the limit (a full minute by default):
    the most a tenant or key can use in one burst after being idle."""
    max_connections: int | None = None
    """Connections the admin port holds at once (None: a share of the open-files limit,
    ``controlplane.connections``)."""
    node_max_connections: int | None = None
    """Connections the node port holds at once (None: as ``max_connections``)."""
    max_connections_per_peer: int | None = None
    """Connections one client address holds at the admin port at once (None: 1/8 of the
    port's cap, at least 8; 0: not counted, and gRPC listens on the port itself:
    ``dataplane.connection_front``)."""
    node_max_connections_per_peer: int | None = None
    """The same at the node port."""
    connection_idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    """Seconds a connection to either port stays open with no call in flight."""
    connection_max_age: float = DEFAULT_MAX_AGE_S
    """Seconds after which a connection to the admin port is closed (its calls given
    ``connection_age_grace`` more to end; clients reconnect for their next call)."""
    node_connection_max_age: float = DEFAULT_NODE_MAX_AGE_S
    """Seconds after which a connection to the node port is closed (its streams given
    ``connection_age_grace`` more; the node reconnects and re-syncs)."""
    connection_age_grace: float = AGE_GRACE_S
