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

The endpoint serves the Prometheus text format and OpenMetrics, which carries the exemplars
(the correlation id of a request in each latency bucket), as ``signalbox.metrics_http``
renders them, on the node's own HTTP server (``dataplane.http.server``, with its limits and
timeouts) and, between workers, plain HTTP/1.1 over the unix socket read with httptools:
aiohttp, the control plane's endpoint, would add ~10 MiB to every worker's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httptools
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from dataplane.connection_front import ConnectionFront
from dataplane.evidence.log import EvidenceLog
from dataplane.evidence.shipper import EvidenceShipper
from dataplane.evidence.spool import Spool
from dataplane.files import private_dir
from dataplane.http.messages import Limits, Request, Response
from dataplane.http.server import HttpServer
from dataplane.pipeline.metrics import RequestMetrics
from dataplane.routing.dispatch import Dispatcher
from dataplane.routing.health import BreakerState
from dataplane.snapshot.store import SnapshotStore
from dataplane.snapshot.sync_client import SyncClient
from dataplane.tls_front import TlsFront
from signalbox.metrics_http import OPENMETRICS, exposition

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
    counting: Callable[[], ConnectionFront | None] = lambda: None
    """The gRPC door's front counting client addresses (where no TLS front does)."""


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
                "HTTP connections answered 503 and closed for being over --http-max-connections "
                "or --http-max-connections-per-peer.",
                labels=["worker"],
            )
            refused.add_metric([self._worker], http.refused_connections)
            yield refused
        counting = s.counting()
        if counting is not None:
            refused_grpc = CounterMetricFamily(
                "signalbox_grpc_connections_refused",
                "gRPC connections closed at once, before any byte, for being over "
                "--grpc-max-connections (over_limit) or --grpc-max-connections-per-peer "
                "(over_peer_limit).",
                labels=["reason", "worker"],
            )
            for reason, count in counting.refused.items():
                refused_grpc.add_metric([reason, self._worker], count)
            yield refused_grpc
        yield from self._garbage_collector()
        fronts = s.fronts()
        if fronts:
            connections = CounterMetricFamily(
                "signalbox_tls_front_connections",
                "Client connections to a door's TLS front (nodes with --tls-client-ca), by how "
                "the handshake ended: trusted, untrusted or no_certificate (its calls refused), "
                "handshake_failed, handshake_timeout, over_limit and over_peer_limit (cut before "
                "the handshake: the front, or the client's address, held as many as it may).",
                labels=["door", "result", "worker"],
            )
            for front in fronts:
                for result, count in front.results.items():
                    connections.add_metric([front.door, result, self._worker], count)
            yield connections

    def _garbage_collector(self) -> Iterator[Metric]:
        """The cyclic garbage collector's work and pace (``dataplane.collector``), by generation:
        prometheus_client's ``python_gc_*`` families, with the worker label."""
        labels = ["generation", "worker"]
        collections = CounterMetricFamily(
            "python_gc_collections",
            "Collections of each generation by the cyclic garbage collector.",
            labels=labels,
        )
        collected = CounterMetricFamily(
            "python_gc_objects_collected", "Objects freed by the cyclic garbage collector.", labels=labels
        )
        uncollectable = CounterMetricFamily(
            "python_gc_objects_uncollectable",
            "Objects the cyclic garbage collector found but could not free.",
            labels=labels,
        )
        threshold = GaugeMetricFamily(
            "signalbox_gc_threshold",
            "When the cyclic collector runs: for generation 0, container allocations net of frees; "
            "for 1 and 2, collections of the generation below.",
            labels=labels,
        )
        for generation, (stats, limit) in enumerate(zip(gc.get_stats(), gc.get_threshold(), strict=False)):
            key = [str(generation), self._worker]
            collections.add_metric(key, stats["collections"])
            collected.add_metric(key, stats["collected"])
            uncollectable.add_metric(key, stats["uncollectable"])
            threshold.add_metric(key, limit)
        yield from (collections, collected, uncollectable, threshold)


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
        self._endpoint = _Endpoint(combined, self._gather if gathers else None)

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
        answers = await asyncio.gather(*(self._peer(i) for i in range(1, self.workers)))
        self._peers.families = [family for families in answers for family in families]

    async def _peer(self, worker: int) -> list[Metric]:
        """What ``worker`` answered, parsed; nothing (and a failure counted) when it did not
        answer in time or its answer cannot be read: one worker never fails the scrape."""
        path = socket_path(self._data_dir, worker)
        try:
            async with asyncio.timeout(PEER_TIMEOUT_S):
                status, body = await _get_unix(path, "/metrics", OPENMETRICS, MAX_PEER_BYTES)
            if status != 200:
                raise ValueError(f"answered {status}")
            return list(text_string_to_metric_families(body.decode()))  # type: ignore[no-untyped-call]
        except (TimeoutError, OSError, ValueError, httptools.HttpParserError) as exc:
            self._peer_failures.labels(str(worker), "0").inc()
            log.warning("metrics of worker %d left out of this scrape: %s", worker, str(exc)[:200])
            return []


_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_LIMITS = Limits(max_body_bytes=1024, header_timeout=10.0, body_timeout=10.0, keepalive_timeout=60.0)
"""A scrape is a bodiless GET; Prometheus keeps its connection between scrapes."""


class _Endpoint:
    """``GET /metrics`` of ``registry`` on a TCP address or a unix socket. ``before`` runs
    on the event loop ahead of each scrape (worker 0 gathering the other workers'), one
    scrape at a time, so its results belong to the scrape that asked for them."""

    def __init__(
        self, registry: CollectorRegistry, before: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.registry = registry
        self._before = before
        self._lock = asyncio.Lock()
        self._server = HttpServer(self._scrape, lambda status, message: message.encode() + b"\n", _LIMITS)
        self.port = 0

    async def start(self, *, listen: str | None = None, unix: Path | None = None) -> None:
        """``listen``: HOST:PORT (port 0 picks one: ``port``); else ``unix``: a socket path."""
        if listen is not None:
            host, _, port = listen.rpartition(":")
            await self._server.start(host.strip("[]") or "127.0.0.1", int(port))
            self.port = self._server.port
        elif unix is not None:
            await self._server.start_unix(unix)
        else:
            raise ValueError("a metrics endpoint needs an address or a socket")

    async def stop(self) -> None:
        await self._server.close(1.0)

    async def _scrape(self, request: Request, response: Response) -> None:
        if request.path != "/metrics":
            await response.send(404, (_TEXT,), b"not found: metrics are at /metrics\n")
            return
        if request.method != "GET":
            await response.send(405, (_TEXT, (b"allow", b"GET")), b"only GET /metrics\n")
            return
        async with self._lock:
            if self._before is not None:
                await self._before()
            body, content_type = exposition(self.registry, request.header("accept"))
        await response.send(200, ((b"content-type", content_type.encode()),), body)


class _Answer:
    """httptools' callbacks for one HTTP/1.1 answer."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


async def _get_unix(path: Path, target: str, accept: str, limit: int) -> tuple[int, bytes]:
    """GET ``target`` from the HTTP server on unix socket ``path``: (status, body). An answer
    over ``limit`` bytes, or one cut short, is a ``ValueError``."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: worker\r\nAccept: {accept}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = _Answer()
        parser = httptools.HttpResponseParser(answer)
        while not answer.complete and (data := await reader.read(64 * 1024)):
            parser.feed_data(data)
            if len(answer.body) > limit:
                raise ValueError(f"answered more than {limit} bytes")
        if not answer.complete:
            raise ValueError("the answer was cut short")
        return parser.get_status_code(), bytes(answer.body)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class _Own(Collector):
    """This worker's registry, as part of the node's combined one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()
