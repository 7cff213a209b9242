"""The control plane's Prometheus metrics (``controlplane serve --metrics-listen``).

Counted where they happen: admin calls by method and result (``api/interceptor.py``, the
same place the audit row is written), NACKs from nodes (``api/sync.py``), evidence records
stored, duplicates and refused batches (``api/evidence.py``). The fleet gauges (nodes per
group by state, and how many snapshot versions each group's nodes are behind its newest)
are read from the database when scraped, on the event loop, so they are as fresh as
``signalbox admin node list``.

Labels are bounded: admin methods come from the proto (an unknown method never reaches a
handler), results are gRPC codes, groups are the admin's node groups; node ids are not
labels (a fleet can be large: ``admin node list`` names them).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge

from controlplane.db.failures import database_status
from controlplane.services.nodes import NodeService
from signalbox.metrics_http import MetricsEndpoint

log = logging.getLogger(__name__)


class ControlPlaneMetrics:
    def __init__(self, nodes: NodeService) -> None:
        self._nodes = nodes
        self.registry = r = CollectorRegistry()
        self.admin_calls = Counter(
            "signalbox_admin_calls",
            "Admin API calls by method and result (gRPC code).",
            ["method", "result"],
            registry=r,
        )
        self.nacks = Counter("signalbox_sync_nacks", "Snapshots nodes refused (NACKs).", registry=r)
        self.evidence_records = Counter(
            "signalbox_evidence_ingested_records", "Evidence records verified and stored.", registry=r
        )
        self.evidence_duplicates = Counter(
            "signalbox_evidence_duplicate_records",
            "Evidence records shipped again and acknowledged without storing (same key, same hash).",
            registry=r,
        )
        self.evidence_refused = Counter(
            "signalbox_evidence_refused_batches",
            "Evidence batches refused from some record on, by the reason's code.",
            ["code"],
            registry=r,
        )
        self.connections_refused = Counter(
            "signalbox_controlplane_connections_refused",
            "Connections to a port (admin, node) closed at once, before any byte: over_limit "
            "(the port held --max-connections) or over_peer_limit (the client's address held "
            "--max-connections-per-peer).",
            ["port", "reason"],
            registry=r,
        )
        self._nodes_gauge = Gauge(
            "signalbox_nodes",
            "Nodes known to the control plane by group and state (connected, disconnected, stale).",
            ["group", "state"],
            registry=r,
        )
        self._lag = Gauge(
            "signalbox_node_convergence_lag_versions",
            "Snapshot versions the most behind node of a group lags its newest (0: converged).",
            ["group"],
            registry=r,
        )
        self._behind = Gauge(
            "signalbox_nodes_behind",
            "Nodes of a group not on its newest snapshot version.",
            ["group"],
            registry=r,
        )
        self._database_up = Gauge(
            "signalbox_database_up",
            "1 when the fleet gauges were read from the database for this scrape; 0 when it "
            "could not be reached (they are left out, the counters are served).",
            registry=r,
        )
        self.endpoint = MetricsEndpoint(r, self.refresh)

    async def refresh(self) -> None:
        """The fleet gauges, read now (before each scrape). With the database unreachable the
        scrape still answers: the counters are what an operator needs most then."""
        try:
            nodes, newest, now = await self._nodes.fleet()
        except Exception as exc:
            if database_status(exc) is None:
                raise
            log.warning("metrics: the fleet could not be read from the database (%s)", exc)
            self._database_up.set(0)
            # Unknown now: left out rather than shown with values that may be stale.
            self._nodes_gauge.clear()
            self._lag.clear()
            self._behind.clear()
            return
        self._database_up.set(1)
        counts: dict[tuple[str, str], int] = {}
        lag: dict[str, int] = {group: 0 for group in newest}
        behind: dict[str, int] = {group: 0 for group in newest}
        for node in nodes:
            group = node.node_group
            state = (
                "stale"
                if self._nodes.is_stale(node, now)
                else "connected"
                if node.connected
                else "disconnected"
            )
            counts[(group, state)] = counts.get((group, state), 0) + 1
            gap = max(0, newest.get(group, 0) - node.applied_version)
            lag[group] = max(lag.get(group, 0), gap)
            behind[group] = behind.get(group, 0) + (gap > 0)
        # A group or state that is gone must not keep its last value.
        self._nodes_gauge.clear()
        self._lag.clear()
        self._behind.clear()
        for (group, state), count in counts.items():
            self._nodes_gauge.labels(group, state).set(count)
        for group, value in lag.items():
            self._lag.labels(group).set(value)
            self._behind.labels(group).set(behind.get(group, 0))
