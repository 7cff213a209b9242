"""Whether a node serves: what gRPC health and the HTTP door's ``/readyz`` both say.

Not ready while a stop has begun, before a valid snapshot was applied, and while the
evidence log cannot write records (a full disk, an I/O error): every request would be
refused, since no answer leaves without its record, so a load balancer must send callers
elsewhere rather than to a node that fails them all.

Nothing tells when a disk has come back short of writing a record, and a node out of the
pool gets no requests to write. So a node is not ready for ``EVIDENCE_RETRY_S`` after its
last failed write, then offers itself again: the load balancer's probes find it ready and
send it callers; if the disk is still full, the first failed write takes it out again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from dataplane.evidence.log import EvidenceLog
from dataplane.snapshot.store import SnapshotStore

EVIDENCE_RETRY_S = 30.0
"""How long after its last failed evidence write a node says it is not ready."""


class Readiness:
    """The node's readiness, pushed to gRPC health for ``services`` whenever it changes."""

    def __init__(
        self,
        health: HealthServicer,
        services: tuple[str, ...],
        *,
        stopping: Callable[[], bool],
        store: Callable[[], SnapshotStore | None],
        evidence: Callable[[], EvidenceLog | None],
    ) -> None:
        self._health = health
        self._services = services
        self._stopping = stopping
        self._store = store
        self._evidence = evidence
        self._retry: asyncio.TimerHandle | None = None
        self._serving: bool | None = None
        """What was last pushed."""
        self._pushes: set[asyncio.Task[None]] = set()

    def reason(self) -> str | None:
        """Why the node does not serve now, None when it does."""
        if self._stopping():
            return "stopping"
        store = self._store()
        if store is None or store.current is None:
            return "no valid snapshot yet"
        evidence = self._evidence()
        if evidence is not None and evidence.broken:
            return f"cannot write evidence ({evidence.broken})"  # until a restart: no retry
        failing = evidence.failing if evidence is not None else ""
        if failing and evidence is not None and time.monotonic() - evidence.failed_at < EVIDENCE_RETRY_S:
            return f"cannot write evidence ({failing})"
        return None

    async def push(self) -> None:
        """Tell gRPC health what ``reason`` says now."""
        serving = self._serving = self.reason() is None
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in self._services:
            await self._health.set(service, status)

    def evidence_changed(self) -> None:
        """The evidence log failed to write a record, or wrote one after failing (called on
        the event loop by the log): push the readiness, and again once a retry is due."""
        loop = asyncio.get_running_loop()
        if self._serving is not (self.reason() is None):
            task = loop.create_task(self.push())
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        evidence = self._evidence()
        if evidence is not None and evidence.failing:
            self._retry = loop.call_later(EVIDENCE_RETRY_S, self._retry_due)

    def _retry_due(self) -> None:
        self._retry = None
        task = asyncio.get_running_loop().create_task(self.push())
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)

    def close(self) -> None:
        """Stop the pending retry (the node is stopping)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
