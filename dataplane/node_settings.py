"""What a data-plane node is told at start: ``NodeSettings`` (every ``dataplane serve`` flag
lands in one field) and the defaults that need no running node."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dataplane.config.model import DeploymentMode, Scope
from dataplane.deadlines import DEFAULT_DEADLINE_S, DEFAULT_STREAM_DEADLINE_S
from dataplane.evidence.log import (
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_CHECKPOINT_RECORDS,
)
from dataplane.evidence.segments import DEFAULT_SEGMENT_BYTES
from dataplane.evidence.shipper import DEFAULT_DRAIN as DEFAULT_EVIDENCE_DRAIN
from dataplane.evidence.shipper import DEFAULT_INTERVAL as DEFAULT_SHIP_INTERVAL
from dataplane.evidence.spool import DEFAULT_SPOOL_MAX_BYTES
from dataplane.http.messages import Limits as HttpLimits
from dataplane.open_files import (
    DEFAULT_GRPC_IDLE_TIMEOUT_S,
    DEFAULT_GRPC_MAX_AGE_S,
    DEFAULT_GRPC_MAX_STREAMS,
    DEFAULT_MAX_CONNECTIONS,
    GRPC_AGE_GRACE_S,
)
from dataplane.providers.credentials import DEFAULT_ENV_PREFIX
from dataplane.quota import DEFAULT_LEASE_INTERVAL
from dataplane.routing.health import DEFAULT_MAX_RETRY_AFTER_S
from dataplane.snapshot.background import ESCALATE_AFTER_S
from dataplane.snapshot.hash_key import HashKeys
from dataplane.snapshot.pin_watch import DEFAULT_POLL_INTERVAL_S
from dataplane.snapshot.sync_client import DEFAULT_MAX_MESSAGE_BYTES
from signalbox.tls import ClientTls, ServerTls


def default_node_id() -> str:
    """``node-<hostname>``: stable across restarts of the same machine or pod."""
    return f"node-{socket.gethostname()}"


WORKERS_DIR = "workers"
"""Under the data dir: the snapshot state of workers other than worker 0."""
WORKER_FOLLOW_INTERVAL_S = 0.25
"""How often a worker other than 0 looks for a snapshot worker 0 applied."""


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Everything a node is configured with at start (flags / ``SIGNALBOX_*`` env)."""

    listen: str = "127.0.0.1:7701"
    """host:port of the Infer API and health service; port 0 picks a free port."""
    tls: ServerTls = field(default_factory=ServerTls)
    """Certificate, key and client CA of the Infer API; plaintext only on loopback or ``insecure``."""
    control_plane_tls: ClientTls = field(default_factory=ClientTls)
    """CA for the control plane's admin port (enrollment; plaintext only to loopback or
    ``insecure``). A client certificate here overrides the enrolled identity for the node port
    (with this CA, or the pinned node CA when none is given); ``insecure`` without any
    certificate makes the node port plaintext (a control plane started with ``--insecure``)."""
    control_plane: str | None = None
    """host:port of the control plane's node port (ConfigSyncService); None: no control plane."""
    enroll_token: str | None = field(default=None, repr=False)
    """One-time bootstrap token, used only when there is no valid certificate yet."""
    enroll_address: str | None = None
    """host:port of the control plane's admin port, where the token is exchanged."""
    trust_keys: tuple[Path, ...] = ()
    """Ed25519 public keys (PEM) whose signatures the node accepts."""
    node_id: str = field(default_factory=default_node_id)
    data_dir: Path = Path("var/node")
    """Last-known-good snapshot, high-water mark and evidence live here."""
    mode: DeploymentMode = DeploymentMode.CLOUD
    scope: Scope = field(default_factory=Scope)
    """The node's own scope; snapshots for any other are refused."""
    snapshot_file: Path | None = None
    """Air-gapped pin: serve this envelope file and never talk to a control plane. A newer
    signed file written at this path later is applied without a restart (``PinWatcher``)."""
    snapshot_poll_interval: float = DEFAULT_POLL_INTERVAL_S
    """How often (seconds) the pin file is checked for a replacement."""
    allow_expired: bool = False
    """Serve snapshots past their expiry (sites without trusted time)."""
    credential_env_prefix: str = DEFAULT_ENV_PREFIX
    """Provider credentials may be read only from env vars starting with this."""
    credential_dir: Path | None = None
    """Provider credential files may be read only inside this directory; None: ``<data_dir>/credentials``."""
    sealing_key: X25519PrivateKey | None = field(default=None, repr=False)
    """This node group's key for sealed provider credentials (``--sealing-key``); None: none."""
    api_key_hash_keys: HashKeys | None = field(default=None, repr=False)
    """The API-key hash key versions from the operator (an air-gapped node); None: those the
    control plane sends on the sync stream (``controlplane.api_key_hash``)."""
    drain_seconds: float = 10.0
    """How long a stop waits for in-flight calls and streams."""
    default_timeout: float = DEFAULT_DEADLINE_S
    """Seconds a unary request whose caller set no deadline may take (``--default-timeout``)."""
    stream_timeout: float = DEFAULT_STREAM_DEADLINE_S
    """Seconds a stream whose caller set no deadline may take (``--stream-timeout``)."""
    worker: int = 0
    """This process's index among the node's workers (``--workers``): its evidence chain is
    ``<node id>/<worker>``; worker 0 also renews the node certificate."""
    workers: int = 1
    """How many workers share the node's ports (SO_REUSEPORT when more than one)."""
    http_listen: str | None = None
    """host:port of the OpenAI-compatible HTTP front door (TLS as ``tls``); None: off."""
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    """Sizes and timeouts of the HTTP front door."""
    grpc_max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Connections the gRPC door (or its TLS front) holds at once; one more is closed."""
    grpc_max_connections_per_peer: int | None = None
    """Connections one client address holds at the gRPC door at once (None: 1/8 of
    ``grpc_max_connections``, at least 8; 0: not counted, and gRPC listens on ``listen``
    itself). Counted by the TLS front with a client CA, else by a counting front
    (``dataplane.connection_front``)."""
    grpc_max_streams: int = DEFAULT_GRPC_MAX_STREAMS
    """Calls one gRPC connection holds at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): past
    it a client's next call waits at the client for one of its calls to end."""
    grpc_idle_timeout: float = DEFAULT_GRPC_IDLE_TIMEOUT_S
    """Seconds a gRPC connection stays open with no call in flight (its client reconnects for
    its next call): idle connections cannot hold the door's connection cap for good."""
    grpc_max_age: float = DEFAULT_GRPC_MAX_AGE_S
    """Seconds after which a gRPC connection is closed, its calls given ``grpc_age_grace`` more
    to end: a call needs no API key to be in flight (a health ``Watch``), so calls held open
    cannot hold the connection cap for good either."""
    grpc_age_grace: float = GRPC_AGE_GRACE_S
    metrics_listen: str | None = None
    """host:port of the Prometheus endpoint (``/metrics``, worker 0); None: metrics off."""
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER_S
    """Longest upstream Retry-After (or Gemini retryDelay) honoured, in seconds: one
    hostile or mistaken 429 must not park a deployment for every tenant of the node."""
    evidence_fsync_interval: float = 0.05
    """Longest time a written evidence record waits for fsync."""
    evidence_checkpoint_records: int = DEFAULT_CHECKPOINT_RECORDS
    """A signed checkpoint at least every this many evidence records..."""
    evidence_checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    """...and every this many seconds while there are new records."""
    evidence_segment_bytes: int = DEFAULT_SEGMENT_BYTES
    """A new evidence segment file beyond this many bytes (acknowledged ones are pruned whole)."""
    evidence_spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    """Unacknowledged evidence beyond which each tenant's ``spool_full`` policy applies."""
    evidence_ship_interval: float = DEFAULT_SHIP_INTERVAL
    """Seconds between evidence batches to the control plane while they are not full."""
    evidence_drain: float = DEFAULT_EVIDENCE_DRAIN
    """On stop, after the last request: seconds the shipper may take to send the rest of the
    evidence and the last checkpoint (0: leave them on disk for the next start)."""
    sync_backoff_base: float = 0.5
    sync_heartbeat_interval: float = 15.0
    """Seconds between heartbeats on the sync stream (the control plane's last_seen)."""
    sync_max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest snapshot message taken from the control plane; a larger one is NACKed."""
    snapshot_idle_wait: float = ESCALATE_AFTER_S
    """Seconds snapshot work waits for idle CPU before it takes a small share of busy CPU."""
    sync_backoff_cap: float = 3.0
    """Longest wait between reconnects: a node is back within about this long of the control plane."""
    reset_high_water_mark: bool = False
    """Start although the high-water mark is missing next to a last-known-good (logged loudly)."""
    http_max_connections: int = 512
    """Open upstream connections over all providers (``dataplane.upstream``)."""
    http_max_per_origin: int = 256
    """Open upstream connections to any one origin (scheme, host, port): a provider that takes
    connections and never answers holds at most these, not the ones every other provider needs."""
    http_max_keepalive: int = 128
    """Idle upstream connections kept for reuse; each is closed after 30 s unused."""
    quota_lease_interval: float = DEFAULT_LEASE_INTERVAL
    """Seconds between quota leases from the control plane (rate limits and budgets): the
    longest a node runs on quota the rest of the fleet may need, and how soon an exhausted
    budget stops it."""
