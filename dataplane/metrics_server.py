"""A node's Prometheus endpoint (``--metrics-listen``): request metrics and node state.

Each worker process keeps its own registry: the request metrics (``pipeline.metrics``) and
gauges of its state read at scrape time (snapshot version and age, sync connection, evidence
spool and shipping lag, breaker state per deployment). Every series carries a ``worker``
label, so the workers' series never collide and ``sum by (...)`` adds them up.

Prometheus scrapes one address per node. A port shared with SO_REUSEPORT would answer for
whichever worker the kernel picked, so only worker 0 listens on ``--metrics-listen``; every
other worker serves its registry on a unix socket in the node's data dir (a 0700 directory,
as the quota ledger's), and worker 0 adds what they answer to its own scrape. A worker that
does not answer within ``PEER_TIMEOUT_S`` is left out of that scrape and counted in
``signalbox_metrics_peer_failures_total``: a slow worker never stalls the node's scrape.

The endpoint (``signalbox.metrics_http``) serves the Prometheus text format and OpenMetrics,
which carries the exemplars (the correlation id of a request in each latency bucket).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from dataplane.evidence.log import EvidenceLog
from dataplane.evidence.shipper import EvidenceShipper
from dataplane.evidence.spool import Spool
from dataplane.files import private_dir
from dataplane.http.server import HttpServer
from dataplane.pipeline.metrics import RequestMetrics
from dataplane.routing.dispatch import Dispatcher
from dataplane.routing.health import BreakerState
from dataplane.snapshot.store import SnapshotStore
from dataplane.snapshot.sync_client import SyncClient
from dataplane.tls_front import TlsFront
from signalbox.metrics_http import OPENMETRICS, MetricsEndpoint

log = logging.getLogger("signalbox.dataplane.metrics")

METRICS_DIR = "metrics"
"""Under the data dir: the unix sockets of workers other than 0."""
PEER_TIMEOUT_S = 2.0
MAX_PEER_BYTES = 16 * 1024 * 1024
BREAKER_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def socket_path(data_dir: Path, worker: int) -> Path:
    return data_dir / METRICS_DIR / f"worker-{worker}.sock"


@dataclass(slots=True)
class NodeState:
    """Where the state gauges read from (each may be absent on a given node)."""

    store: Callable[[], SnapshotStore | None]
    dispatcher: Callable[[], Dispatcher | None]
    evidence: Callable[[], EvidenceLog | None]
    spool: Spool
    shipper: Callable[[], EvidenceShipper | None]
    sync: Callable[[], SyncClient | None]
    fronts: Callable[[], Sequence[TlsFront]] = tuple
    """The TLS fronts of a node that requires client certificates (none otherwise)."""
    http: Callable[[], HttpServer | None] = lambda: None
    """The HTTP door's server (``--http-listen``)."""


class _StateCollector(Collector):
    """Gauges of one worker's state, read when scraped."""

    def __init__(self, state: NodeState, worker: str) -> None:
        self._state = state
        self._worker = worker

    def _gauge(self, name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
        names = [*labels, "worker"]
        family = GaugeMetricFamily(name, doc, labels=names)
        family.add_metric([*labels.values(), self._worker], value)
        return family

    def collect(self) -> Iterator[Metric]:
        s = self._state
        store = s.store()
        current = store.current if store is not None else None
        yield self._gauge(
            "signalbox_snapshot_version",
            "Version of the snapshot the worker serves (0: none).",
            current.version if current is not None else 0,
        )
        if current is not None:
            yield self._gauge(
                "signalbox_snapshot_age_seconds",
                "Seconds since the served snapshot was built by the control plane.",
                max(time.time() - current.config.created_at, 0.0),
            )
        sync = s.sync()
        if sync is not None:
            yield self._gauge(
                "signalbox_sync_connected",
                "1 while the worker's config-sync stream to the control plane is up.",
                1 if sync.status.connected else 0,
            )
        spool = s.spool.status()
        yield self._gauge(
            "signalbox_evidence_spool_bytes",
            "Evidence on disk not yet acknowledged by the control plane.",
            spool["bytes"],
        )
        evidence, shipper = s.evidence(), s.shipper()
        if evidence is not None and shipper is not None:
            yield self._gauge(
                "signalbox_evidence_shipping_lag_records",
                "Records written but not yet acknowledged by the control plane.",
                max(evidence.head.seq - shipper.status.shipped_seq, 0),
            )
        dispatcher = s.dispatcher()
        if dispatcher is not None:
            family = GaugeMetricFamily(
                "signalbox_breaker_state",
                "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open.",
                labels=["deployment", "worker"],
            )
            for key, health in sorted(dispatcher.health.all().items()):
                family.add_metric([key, self._worker], BREAKER_VALUE.get(health.state, 0))
            yield family
        http = s.http()
        if http is not None:
            yield self._gauge(
                "signalbox_http_connections",
                "HTTP connections open to the worker's door (behind a TLS front: the front's to it).",
                len(http.connections),
            )
            refused = CounterMetricFamily(
                "signalbox_http_connections_refused",
                "HTTP connections answered 503 and closed for being over --http-max-connections.",
                labels=["worker"],
            )
            refused.add_metric([self._worker], http.refused_connections)
            yield refused
        fronts = s.fronts()
        if fronts:
            connections = CounterMetricFamily(
                "signalbox_tls_front_connections",
                "Client connections to a door's TLS front (nodes with --tls-client-ca), by how "
                "the handshake ended: trusted, untrusted or no_certificate (its calls refused), "
                "handshake_failed, handshake_timeout, over_limit (cut before the handshake: the "
                "front held as many as it may).",
                labels=["door", "result", "worker"],
            )
            for front in fronts:
                for result, count in front.results.items():
                    connections.add_metric([front.door, result, self._worker], count)
            yield connections


class _Peers(Collector):
    """What the other workers answered for this scrape (set just before it is rendered)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return self.families


class NodeMetrics:
    """The registry of one worker and, on worker 0, the node's metrics endpoint."""

    def __init__(self, state: NodeState, *, worker: int, workers: int, data_dir: Path) -> None:
        self.worker = worker
        self.workers = workers
        self._data_dir = data_dir
        self.registry = CollectorRegistry()
        self.requests = RequestMetrics(self.registry, worker)
        self.registry.register(_StateCollector(state, str(worker)))
        self._peer_failures = Counter(
            "signalbox_metrics_peer_failures",
            "Scrapes in which another worker of the node did not answer in time.",
            ["peer", "worker"],
            registry=self.registry,
        )
        gathers = worker == 0 and workers > 1
        combined = self.registry
        if gathers:
            combined = CollectorRegistry(auto_describe=False)
            combined.register(_Own(self.registry))
            self._peers = _Peers()
            combined.register(self._peers)
        self._endpoint = MetricsEndpoint(combined, self._gather if gathers else None)

    @property
    def port(self) -> int:
        return self._endpoint.port

    async def start(self, listen: str | None) -> None:
        """Worker 0: listen on ``listen`` (HOST:PORT); others: on their unix socket."""
        if self.worker == 0:
            if listen is None:
                raise ValueError("worker 0 needs --metrics-listen")
            await self._endpoint.start(listen=listen)
            return
        path = socket_path(self._data_dir, self.worker)
        private_dir(path.parent)
        path.unlink(missing_ok=True)
        await self._endpoint.start(unix=path)

    async def stop(self) -> None:
        await self._endpoint.stop()
        if self.worker != 0:
            socket_path(self._data_dir, self.worker).unlink(missing_ok=True)

    async def _gather(self) -> None:
        texts = await asyncio.gather(*(self._peer(i) for i in range(1, self.workers)))
        families: list[Metric] = []
        for text in texts:
            if text is not None:
                families.extend(text_string_to_metric_families(text))  # type: ignore[no-untyped-call]
        self._peers.families = families

    async def _peer(self, worker: int) -> str | None:
        from aiohttp import ClientError, ClientSession, ClientTimeout, UnixConnector

        path = socket_path(self._data_dir, worker)
        try:
            async with (
                ClientSession(
                    connector=UnixConnector(path=str(path)), timeout=ClientTimeout(total=PEER_TIMEOUT_S)
                ) as session,
                session.get("http://worker/metrics", headers={"Accept": OPENMETRICS}) as answer,
            ):
                body = await answer.content.read(MAX_PEER_BYTES + 1)
                if answer.status != 200 or len(body) > MAX_PEER_BYTES:
                    raise ValueError(f"answered {answer.status} with {len(body)} bytes")
                return body.decode()
        except (TimeoutError, OSError, ValueError, ClientError) as exc:
            self._peer_failures.labels(str(worker), "0").inc()
            log.warning("metrics of worker %d left out of this scrape: %s", worker, exc)
            return None


class _Own(Collector):
    """This worker's registry, as part of the node's combined one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()
