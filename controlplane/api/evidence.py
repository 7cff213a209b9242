"""EvidenceService on the node port: batches in, one ACK per batch after its commit.

The node is the certificate's (``controlplane.api.node_auth``), never what a batch claims;
with ``--insecure`` (no certificate) the first batch's chain names the node, as a Hello
does for config sync. Batches are taken one at a time per stream, so ACKs come in order.

Revocation ends shipping as it ends config sync: the broker's revocation notice (every
replica LISTENs for it) ends this node's streams here at once, even idle ones; and before
each batch the certificate is looked up again, so a batch that arrives after ``RevokeNode``
committed is refused (PERMISSION_DENIED) with nothing of it stored, whether or not the
notice has arrived yet. A batch after the stream's certificate expired is refused
(UNAUTHENTICATED) with nothing of it stored: TLS checked it only at the handshake. A node
holds at most ``MAX_STREAMS_PER_NODE`` streams here; a newer one ends the oldest (ABORTED).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.api.node_auth import NodeAuthenticator
from controlplane.api.status import bounded, status_for
from controlplane.db.failures import database_status
from controlplane.db.session import DatabaseClock
from controlplane.errors import ControlPlaneError, PermissionDenied, StreamSuperseded, Unauthenticated
from controlplane.evidence.errors import EvidenceRefused
from controlplane.evidence.ingest import CHAIN_ID_RE, Batch, EvidenceIngest
from controlplane.evidence.queries import chain_head
from controlplane.services.identity import NodeIdentity
from dataplane.connection_front import peer_of
from signalbox.api.evidence.v1 import evidence_pb2, evidence_pb2_grpc
from signalbox.text import printable
from signalbox.wallclock import utc_now

if TYPE_CHECKING:
    from controlplane.metrics import ControlPlaneMetrics

log = logging.getLogger(__name__)


MAX_STREAMS_PER_NODE = 128
"""Ship streams one node id may hold open on a replica: one per chain (worker process) it
ships, and a reconnect may overlap the stream it replaces. A newer stream beyond this ends
the oldest (ABORTED), as config sync does: each idle stream holds memory here, and a node
could otherwise open them without end; a node reconnecting is never refused because of
streams of its own that are dead already."""


@dataclass(eq=False, slots=True)
class _Open:
    """A Ship stream open here; ``end`` makes it stop reading and fail with ``why``."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    why: ControlPlaneError | None = None

    def end(self, why: ControlPlaneError) -> None:
        if self.why is None:
            self.why = why
        self.stop.set()


class EvidenceServicer(evidence_pb2_grpc.EvidenceServiceServicer):
    def __init__(
        self, ingest: EvidenceIngest, auth: NodeAuthenticator, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        self._ingest = ingest
        self._auth = auth
        self._sessions = sessions
        self.clock: Callable[[], datetime] = utc_now
        """This host's wall clock: only compared with the database's (``_expiry_clock``)."""
        self._expiry_clock = DatabaseClock(sessions, lambda: self.clock(), "node certificate expiries")
        """The clock a stream's certificate expires by: the database's, which dated its
        ``not_after`` and every replica shares (as config sync's streams do). By this host's,
        a replica ahead refused a valid node's every batch, one behind took a lapsed one's."""
        self._streams: dict[str, list[_Open]] = {}
        """Per node id: its Ship streams open here, oldest first."""
        self.metrics: ControlPlaneMetrics | None = None
        """Counts stored, duplicate and refused evidence when the control plane serves metrics."""

    async def _expired(self, identity: NodeIdentity) -> bool:
        if identity.not_after is None:
            return False
        # A held anchor goes on through a database outage: that batch fails on its own.
        return identity.not_after <= await self._expiry_clock.now(stale_ok=True)

    def revoked(self, node_id: str) -> None:
        """``node_id``'s certificates were revoked: end its streams on this replica."""
        for stream in self._streams.get(node_id, ()):
            stream.end(PermissionDenied(f"node {node_id}: certificate revoked"))

    async def _batches(
        self, request_iterator: AsyncIterator[evidence_pb2.ShipBatch], ended: asyncio.Event
    ) -> AsyncGenerator[evidence_pb2.ShipBatch | None]:
        """The stream's batches; None once ``ended`` is set (then no more are read)."""
        requests = aiter(request_iterator)
        stop = asyncio.ensure_future(ended.wait())
        batch: asyncio.Future[evidence_pb2.ShipBatch | None] | None = None
        try:
            while True:
                batch = asyncio.ensure_future(anext(requests, None))
                await asyncio.wait((batch, stop), return_when=asyncio.FIRST_COMPLETED)
                if stop.done():
                    yield None
                    return
                item = batch.result()
                if item is None:
                    return
                yield item
        finally:
            stop.cancel()
            if batch is not None:
                batch.cancel()

    async def Ship(
        self,
        request_iterator: AsyncIterator[evidence_pb2.ShipBatch],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[evidence_pb2.ShipAck]:
        node_id = ""
        public_key = b""
        this = _Open()
        try:
            identity = await self._auth.authenticate(context)
            if identity is not None:
                node_id, public_key = identity.node_id, identity.public_key
                streams = self._streams.setdefault(node_id, [])
                streams.append(this)
                if len(streams) > MAX_STREAMS_PER_NODE:
                    streams[0].end(
                        StreamSuperseded(
                            f"node {node_id}: superseded by a newer evidence stream "
                            f"(at most {MAX_STREAMS_PER_NODE} per node)"
                        )
                    )
            batches = contextlib.aclosing(self._batches(request_iterator, this.stop))
            async with batches as stream:
                async for batch in stream:
                    if batch is None:  # revoked through this control plane, or superseded: at once
                        assert this.why is not None
                        log.warning("ending the evidence stream of node %s: %s", printable(node_id), this.why)
                        raise this.why
                    if identity is not None and await self._expired(identity):
                        # TLS checked the certificate at the handshake only (as config sync).
                        raise Unauthenticated(
                            f"node {node_id}: certificate expired; reconnect with a renewed one"
                        )
                    if not node_id:  # insecure node port: development only
                        match = CHAIN_ID_RE.fullmatch(batch.chain_id)
                        node_id = match.group("node") if match else ""
                    try:
                        # An insecure node port (development) has no certificate to check a
                        # checkpoint with: its records are stored, its checkpoints are not.
                        notes = list(batch.checkpoints) if identity is not None else []
                        # Through any replica: the batch's transaction checks the certificate.
                        ack = await self._ingest.ingest(
                            node_id,
                            Batch(batch.chain_id, list(batch.records), notes),
                            public_key,
                            identity.serial if identity is not None else "",
                        )
                    except PermissionDenied as exc:
                        log.warning("ending the evidence stream of node %s: %s", printable(node_id), exc)
                        raise
                    except EvidenceRefused as exc:
                        if self.metrics is not None:
                            self.metrics.evidence_refused.labels(exc.status.name).inc()
                        # Refused before it was read into the store (too many records, a note
                        # that does not parse or verify): the ACK still says how far the chain is
                        # stored. Answered 0, it told the node's shipper the store had lost the
                        # chain, and the shipper resent it from seq 1.
                        yield evidence_pb2.ShipAck(
                            chain_id=batch.chain_id,
                            head_seq=await chain_head(self._sessions, batch.chain_id)
                            if CHAIN_ID_RE.fullmatch(batch.chain_id)
                            else 0,
                            error=evidence_pb2.BatchError(
                                code=exc.status.name, message=bounded(exc.message), seq=exc.seq
                            ),
                        )
                        continue
                    if self.metrics is not None:
                        self.metrics.evidence_records.inc(ack.stored)
                        self.metrics.evidence_duplicates.inc(ack.duplicates)
                        if ack.refused is not None:
                            self.metrics.evidence_refused.labels(ack.refused.status.name).inc()
                    reply = evidence_pb2.ShipAck(
                        chain_id=ack.chain_id,
                        head_seq=ack.head_seq,
                        stored=ack.stored,
                        duplicates=ack.duplicates,
                        checkpoints=ack.checkpoints,
                    )
                    if ack.refused is not None:
                        log.warning(
                            "evidence from node %s refused: %s", node_id, bounded(ack.refused.message)
                        )
                        reply.error.CopyFrom(
                            evidence_pb2.BatchError(
                                code=ack.refused.status.name,
                                message=bounded(ack.refused.message),
                                seq=ack.refused.seq,
                            )
                        )
                    yield reply
        except ControlPlaneError as exc:
            code, message = status_for(exc) or (grpc.StatusCode.INTERNAL, "evidence stream failed")
            log.warning("evidence stream of %s refused: %s", node_id or peer_of(context), message)
            await context.abort(code, message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            # The database went away, or a bug: nothing of the batch was acknowledged, so the
            # node resends it. The cause is for operators, not for the node.
            mapped = database_status(exc)
            if mapped is None:
                log.exception("evidence from %s could not be stored", node_id or peer_of(context))
                mapped = (grpc.StatusCode.UNAVAILABLE, "evidence could not be stored now; resend")
            else:
                log.warning("evidence from %s could not be stored: %s", node_id or peer_of(context), exc)
            await context.abort(*mapped)
        finally:
            open_here = self._streams.get(node_id)
            if open_here is not None:
                if this in open_here:
                    open_here.remove(this)
                if not open_here:
                    del self._streams[node_id]
