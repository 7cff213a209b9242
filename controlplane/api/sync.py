"""ConfigSyncService: push signed snapshots to nodes; record their ACKs and NACKs.

Per stream: the peer certificate is checked first (``controlplane.api.node_auth``:
unknown or revoked -> refused before anything is read or sent); the node says Hello,
which must name the certificate's node id (and, when it names a node group, a mode or a
site, the certificate's: what is recorded for the node is the certificate's). The certificate's group decides which group's snapshots the
stream gets (an unknown group is refused before anything is recorded or sent); we
record the node and send its group's newest envelope if it is newer than what the
node serves; then we send each newer version of that group the broker announces. A
version (with that payload hash) a node NACKed is never sent to it
again, on this stream or after a reconnect; later versions still are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from controlplane.api.convert import mode_proto
from controlplane.api.node_auth import NodeAuthenticator
from controlplane.api.status import status_for
from controlplane.api.sync_state import (
    MAX_REFUSED_PER_STREAM,
    SEEN_WRITE_INTERVAL,
    SHA256_BYTES,
    Invalid,
    RefusedVersions,
    StreamState,
    check_answer,
    paced,
    recorded_scope,
)
from controlplane.api_key_hash import ApiKeyHasher, LiveHashKeys
from controlplane.db.session import DatabaseClock
from controlplane.errors import ControlPlaneError
from controlplane.limits import DEFAULT_GROUP, GROUP_NAME_CHARS, INT64_MAX
from controlplane.services.groups import GROUP_NAME_RE
from controlplane.services.identity import NodeIdentity
from controlplane.services.nodes import NodeHello, NodeService
from controlplane.services.presence import Disconnects
from controlplane.snapshots.broker import CLOSED, REVOKED, SnapshotBroker, Subscription
from dataplane.connection_front import peer_of
from dataplane.snapshot.compile import MODE_FROM_PROTO
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2, sync_pb2_grpc
from signalbox.text import printable
from signalbox.wallclock import RECHECK_SECONDS, elapsed, utc_now

MAX_NODE_ID_CHARS = 256
EXPIRED = object()
SUPERSEDED = object()
MAX_STREAMS_PER_NODE = 4
"""Sync streams one node id may hold open on a replica. A node needs one; a reconnect may
overlap the stream it replaces until the replica sees that one die. A newer stream beyond
this ends the oldest (ABORTED): a node's streams cannot pile up (each holds a subscription,
and its Hello wrote the node's row), and a node reconnecting is never refused because of
streams of its own that are dead already."""
MAX_REASON_LOG_CHARS = 500

if TYPE_CHECKING:
    from controlplane.metrics import ControlPlaneMetrics

log = logging.getLogger(__name__)


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> NoReturn:
    """End the stream with ``exc``'s status (``controlplane.api.status``): the database gone
    is UNAVAILABLE, so the node reconnects with backoff; the driver's text stays in the log."""
    mapped = status_for(exc)
    if mapped is None:
        log.error("config sync with %s failed", peer_of(context), exc_info=exc)
        mapped = (grpc.StatusCode.INTERNAL, "internal error")
    else:
        log.warning("sync refused to %s: %s", peer_of(context), mapped[1])
    await context.abort(*mapped)
    raise AssertionError("abort raises")  # pragma: no cover


def _group_of(identity: NodeIdentity) -> str:
    """The node group whose snapshots this stream gets: the certificate's (with an
    ``--insecure`` node port, what the Hello's scope names); empty means ``default``.
    The one place a stream's group is decided."""
    return identity.group or DEFAULT_GROUP


class ConfigSyncServicer(sync_pb2_grpc.ConfigSyncServiceServicer):
    """One long-lived bidi stream per node."""

    def __init__(
        self,
        broker: SnapshotBroker,
        nodes: NodeService,
        auth: NodeAuthenticator,
        *,
        hello_timeout: float = 10.0,
        api_key_hash_keys: LiveHashKeys | None = None,
    ) -> None:
        self._broker = broker
        self._hash_keys = api_key_hash_keys
        self._nodes = nodes
        self._auth = auth
        self._hello_timeout = hello_timeout
        self.streams: dict[str, int] = {}
        """Open streams per node id on this replica."""
        self._inboxes: dict[str, list[Subscription]] = {}
        self._states: dict[Subscription, StreamState] = {}
        """Each node's open streams' inboxes on this replica, oldest first."""
        self._bookkeeping: set[asyncio.Task[None]] = set()
        self.metrics: ControlPlaneMetrics | None = None
        """Counts NACKs when the control plane serves metrics."""
        self.clock: Callable[[], datetime] = utc_now
        """This host's wall clock: only compared with the database's (``_expiry_clock``)."""
        self._expiry_clock = DatabaseClock(nodes.sessions, lambda: self.clock(), "node certificate expiries")
        """The clock a stream's certificate expires by: the database's, which dated its
        ``not_after`` (``IdentityService``) and which every replica shares."""
        self.disconnects = Disconnects(nodes, self._expiry_clock, lambda node_id: node_id in self.streams)
        self.recheck = RECHECK_SECONDS
        """The longest wait before a stream reads the clock again for its certificate's expiry."""

    async def _live_keys(self, group: str) -> tuple[ApiKeyHasher, ...]:
        """The hash key versions to send with ``group``'s newest snapshot."""
        if self._hash_keys is None:
            return ()
        latest = self._broker.latest_for(group)
        return await self._hash_keys.for_snapshot(group, latest.version if latest is not None else 0)

    @staticmethod
    def _message(message: sync_pb2.ServerMessage, keys: tuple[ApiKeyHasher, ...]) -> sync_pb2.ServerMessage:
        # Every snapshot travels with the live versions of the API-key hash key: the node
        # needs them to check the snapshot's keys, and they are never part of a snapshot
        # (controlplane.api_key_hash). The single field keeps nodes of earlier versions working.
        if keys:
            message.api_key_hash_key = keys[-1].key
            message.api_key_hash_keys.extend(
                sync_pb2.ApiKeyHashKeyVersion(version=k.version, key=k.key) for k in keys
            )
        return message

    async def heartbeat(self, interval: float) -> None:
        """Keep ``last_seen`` of the nodes streaming to this replica fresh; runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self._nodes.touch(sorted(self.streams))
                await self.disconnects.retry()
            except Exception:
                log.exception("could not record node heartbeats")

    async def drain(self) -> None:
        """Wait for the database writes of streams that just ended (before the engine goes)."""
        while self._bookkeeping:
            await asyncio.gather(*self._bookkeeping, return_exceptions=True)

    def inject(
        self, envelope: snapshot_pb2.SignedEnvelope | sync_pb2.SnapshotDelta, node_id: str | None = None
    ) -> int:
        """Test-only: push ``envelope`` unchanged to ``node_id``'s streams (all when None)."""
        return self._broker.inject(envelope, node_id)

    def refusals_held(self, node_id: str) -> list[int]:
        """How many refused versions each open stream of ``node_id`` remembers."""
        return [
            len(self._states[sub].refused) for sub in self._inboxes.get(node_id, []) if sub in self._states
        ]

    async def Sync(
        self,
        request_iterator: AsyncIterator[sync_pb2.NodeMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[sync_pb2.ServerMessage]:
        try:
            certified = await self._auth.authenticate(context)
        except Exception as exc:
            await _refuse(context, exc)
        try:
            async with asyncio.timeout(self._hello_timeout):  # not wait_for: it can lose a cancel on 3.11
                first = await anext(aiter(request_iterator))
        except (StopAsyncIteration, TimeoutError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello: the first message must be a Hello")
        except ControlPlaneError as exc:  # bytes that are no message (``controlplane.api.decoding``)
            await _refuse(context, exc)
        if first.WhichOneof("message") != "hello" or not first.hello.node_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "hello.node_id: the first message must be a Hello with node_id",
            )
        hello = first.hello
        node_id = hello.node_id
        if len(node_id) > MAX_NODE_ID_CHARS or printable(node_id, MAX_NODE_ID_CHARS) != node_id:
            # The id keys the node's row and appears in every log line about it: no control
            # characters (a newline would forge log lines), no unbounded length.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"hello.node_id: must be 1..{MAX_NODE_ID_CHARS} characters without control characters "
                f'(got "{printable(node_id, 80)}")',
            )
        if hello.applied_version > INT64_MAX:
            # The wire says uint64, the database column is a bigint: refused here, the field
            # named, rather than an UNKNOWN carrying the driver's error from the write below.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"hello.applied_version: at most {INT64_MAX} (got {hello.applied_version})",
            )
        if len(hello.applied_hash) > SHA256_BYTES:
            # Stored in the node's row and, when it disagrees with ours, logged in hex: a
            # megabyte "hash" would be a megabyte row and a two-megabyte log line.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"hello.applied_hash: at most {SHA256_BYTES} bytes (got {len(hello.applied_hash)})",
            )
        identity = await self._check_claims(context, hello, certified)
        group = _group_of(identity)
        if not GROUP_NAME_RE.fullmatch(group):
            # Checked before the database is asked: with --insecure a node chooses this string.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"hello.scope.node_group: must be 1..{GROUP_NAME_CHARS} characters of a-z, 0-9 and '-' "
                f"(got {printable(group, 80)!r})",
            )
        try:
            state, sub = await self._open(context, hello, identity, group, certified)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await _refuse(context, exc)
        self.streams[node_id] = self.streams.get(node_id, 0) + 1
        self._states[sub] = state
        inboxes = self._inboxes.setdefault(node_id, [])
        inboxes.append(sub)
        if len(inboxes) > MAX_STREAMS_PER_NODE:
            inboxes.pop(0).queue.put_nowait(SUPERSEDED)
        reader = asyncio.create_task(self._read(request_iterator, state, sub), name=f"sync-read-{node_id}")
        log.info("node %s of group %s connected (applied v%d)", printable(node_id), group, state.applied)
        try:
            async with contextlib.aclosing(self._stream(context, state, sub, identity)) as messages:
                async for message in messages:
                    yield message
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            # E.g. the database went away while the hash keys were read: the node reconnects.
            await _refuse(context, exc)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._broker.unsubscribe(sub)
            self._states.pop(sub, None)
            inboxes = self._inboxes.get(node_id, [])
            if sub in inboxes:
                inboxes.remove(sub)
            if not inboxes:
                self._inboxes.pop(node_id, None)
            self.streams[node_id] -= 1
            if not self.streams[node_id]:
                del self.streams[node_id]
                # A task, not an await: the stream may be ending because it was cancelled,
                # and the node must still be marked disconnected. ``drain`` waits for it.
                task = asyncio.create_task(self.disconnects.record(node_id))
                self._bookkeeping.add(task)
                task.add_done_callback(self._bookkeeping.discard)
            log.info("node %s disconnected", printable(node_id))

    async def _open(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        hello: sync_pb2.Hello,
        identity: NodeIdentity,
        group: str,
        certified: NodeIdentity | None,
    ) -> tuple[StreamState, Subscription]:
        """Record the node and subscribe its stream (the database's part of a stream's start);
        ``certified``: the peer certificate's identity (None: an insecure node port)."""
        node_id = hello.node_id
        if not await self._nodes.group_exists(group):
            # Before the node is recorded and before any snapshot byte is sent.
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"hello.scope.node_group: node group {printable(group, 80)!r} not found",
            )
        row = await self._nodes.hello(
            NodeHello(
                node_id=node_id,
                node_group=group,
                software_version=hello.software_version,
                mode=int(hello.mode) if certified is None else int(mode_proto(identity.mode)),
                scope=recorded_scope(hello.scope, certified),
                applied_version=hello.applied_version,
                applied_hash=hello.applied_hash,
            )
        )
        state = StreamState(
            node_id,
            identity,
            applied=row.applied_version,
            group=group,
            refused=RefusedVersions(await self._nodes.refused(node_id, MAX_REFUSED_PER_STREAM)),
            accepts_delta=hello.accepts_delta,
            base=(hello.applied_version, bytes(hello.applied_hash)),
            runs=(hello.applied_version, bytes(hello.applied_hash)),
        )
        # A change committed within the debounce window must not be missed by a node
        # connecting right now: look at the database, not only the broker's cache.
        await self._broker.refresh()
        if hello.HasField("delivery_failure") and hello.delivery_failure.reason:
            await self._delivery_failed(state, hello.delivery_failure)
        sub = self._broker.subscribe(node_id, group)
        try:
            if await self._auth.revoked_since(identity):
                # Revoked between the check above and the subscription: its NOTIFY found no stream.
                sub.queue.put_nowait(REVOKED)
        except BaseException:
            self._broker.unsubscribe(sub)
            raise
        return state, sub

    async def _stream(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        state: StreamState,
        sub: Subscription,
        identity: NodeIdentity,
    ) -> AsyncGenerator[sync_pb2.ServerMessage]:
        """What the stream sends until it ends: each newer snapshot of its group."""
        node_id, group = state.node_id, state.group
        sub.wake()  # look at the newest snapshot right away
        while True:
            item = await self._next(sub, identity)
            if item is CLOSED:
                break
            if item is SUPERSEDED:
                await context.abort(
                    grpc.StatusCode.ABORTED,
                    f"node {node_id}: superseded by a newer sync stream "
                    f"(at most {MAX_STREAMS_PER_NODE} per node)",
                )
            if isinstance(item, Invalid):
                await context.abort(item.code, item.message)
            if item is EXPIRED:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"node {node_id}: certificate expired; reconnect with a renewed one",
                )
            if item is REVOKED:
                log.warning("node %s revoked: ending its stream", printable(node_id))
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"node {node_id}: certificate revoked")
            if isinstance(item, snapshot_pb2.SignedEnvelope):
                keys = await self._live_keys(group)
                yield self._message(sync_pb2.ServerMessage(envelope=item), keys)
                continue
            if isinstance(item, sync_pb2.SnapshotDelta):
                keys = await self._live_keys(group)
                yield self._message(sync_pb2.ServerMessage(delta=item), keys)
                continue
            due = self._due(state)
            keys = await self._live_keys(group) if due else ()
            for outgoing in due:
                yield self._message(outgoing, keys)

    async def _check_claims(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        hello: sync_pb2.Hello,
        certified: NodeIdentity | None,
    ) -> NodeIdentity:
        """The stream's identity: the certificate's, which the Hello may not contradict."""
        if certified is None:  # insecure node port (development): the Hello is all there is
            return NodeIdentity(hello.node_id, hello.scope.node_group, site=hello.scope.site)
        known = MODE_FROM_PROTO.get(hello.mode)
        mode = known.value if known is not None else (str(int(hello.mode)) if hello.mode else "")
        # (field, what the Hello says, the certificate's, its name there). Empty group, mode,
        # site: not said. The certificate binds the mode and site its group had at issue; a
        # node configured otherwise would route (and be listed) as what it is not certified as.
        claims = (
            ("hello.node_id", hello.node_id, certified.node_id, "node id"),
            ("hello.scope.node_group", hello.scope.node_group, certified.group, "group"),
            ("hello.mode", mode if certified.mode else "", certified.mode, "mode"),
            ("hello.scope.site", hello.scope.site, certified.site, "site"),
        )
        for name, claimed, bound, what in claims:
            if (claimed or name == "hello.node_id") and claimed != bound:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f'{name}: "{printable(claimed, 80)}" is not the certificate\'s {what} '
                    f'"{printable(bound, 80)}"',
                )
        return certified

    async def _next(self, sub: Subscription, identity: NodeIdentity) -> object:
        """The next inbox item; ``EXPIRED`` once the stream's certificate expires (TLS checked
        it only at the handshake, and a renewed node reconnects with its new one). The expiry
        is an instant of the database's clock, which dated it: by this replica's own, a
        replica behind kept a lapsed certificate's stream open (and sent it every snapshot)
        and one ahead ended valid ones. Waited for in slices (``signalbox.wallclock``), as
        asyncio's monotonic timeout would overrun it by any suspension."""
        if identity.not_after is None:
            return sub.taken(await sub.queue.get())
        while True:
            # stale_ok: a database down meanwhile does not end a stream that needs none.
            left = (identity.not_after - await self._expiry_clock.now(stale_ok=True)).total_seconds()
            if left <= 0:
                return EXPIRED
            # Not wait_for: it can lose a cancel on 3.11.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, self.recheck)):
                    return sub.taken(await sub.queue.get())

    async def _delivery_failed(self, state: StreamState, failure: sync_pb2.DeliveryFailure) -> None:
        """The node could not take a message of its last stream: record it as a NACK.

        A whole message is only ever the newest snapshot, so that is what the node refused
        when the sizes agree. Recording it also keeps us from sending it again and again on
        every reconnect. A delta that failed is followed by the newest whole.
        """
        # Whatever failed (a delta too), the newest goes out whole next: if the node cannot
        # take that either, its next Hello names that size and it is recorded below.
        state.whole_next = True
        latest = self._broker.latest_for(state.group)
        reason = printable(failure.reason, MAX_REASON_LOG_CHARS)
        if (latest is not None) and (latest.version, latest.sha256) in state.refused:
            return  # already recorded (the node repeats it until a stream carries a message)
        if latest is None or latest.version <= state.applied:
            log.warning("node %s could not take a sync message: %s", printable(state.node_id), reason)
            return
        # The size of the message as sent: with the API-key hash keys.
        keys = self._hash_keys.cached(state.group) if self._hash_keys is not None else ()
        size = len(self._message(sync_pb2.ServerMessage(envelope=latest.envelope), keys).SerializeToString())
        if failure.message_bytes and failure.message_bytes != size:
            # An older version failed; the newest goes out now and the node tells about it.
            log.warning("node %s could not take an older snapshot: %s", printable(state.node_id), reason)
            return
        reason = f"{reason} (v{latest.version}, {size} bytes sent)"
        log.warning("node %s refused v%d: %s", printable(state.node_id), latest.version, reason)
        state.refused.add((latest.version, latest.sha256))
        await self._nodes.nack(state.node_id, latest.version, latest.sha256, reason)
        if self.metrics is not None:
            self.metrics.nacks.inc()

    def _due(self, state: StreamState) -> list[sync_pb2.ServerMessage]:
        """What to send now: nothing, the deltas from what the node runs (or was just sent)
        to the newest, or the newest whole."""
        latest = self._broker.latest_for(state.group)
        if latest is None or latest.version <= max(state.applied, state.last_sent):
            return []
        if (latest.version, latest.sha256) in state.refused:
            return []
        chain = None
        if state.accepts_delta and not state.whole_next and state.base[0] > 0:
            chain = self._broker.delta_chain(state.group, state.base, latest.version)
            if chain is not None and any(
                (d.base_version + 1, bytes(d.payload_sha256)) in state.refused for d in chain
            ):
                chain = None  # a version in between was refused: the node cannot step through it
        state.whole_next = False
        state.last_sent = latest.version
        state.base = (latest.version, latest.sha256)
        if chain is None:
            return [sync_pb2.ServerMessage(envelope=latest.envelope)]
        return [sync_pb2.ServerMessage(delta=delta) for delta in chain]

    async def _read(
        self, request_iterator: AsyncIterator[sync_pb2.NodeMessage], state: StreamState, sub: Subscription
    ) -> None:
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("message")
                if kind == "resync":
                    # The node could not rebuild a delta: the newest goes out whole. Logged
                    # once per wake taken, as the sends are: not a line per message of a loop.
                    if not sub.woken:
                        log.info(
                            "node %s asks for the newest snapshot whole: %s",
                            printable(state.node_id),
                            printable(message.resync.reason, MAX_REASON_LOG_CHARS),
                        )
                    state.whole_next = True
                    state.last_sent = 0
                    state.applied = min(state.applied, message.resync.version)
                    sub.wake()
                elif kind in ("ack", "nack") and (
                    invalid := check_answer(
                        kind, getattr(message, kind).version, getattr(message, kind).payload_sha256
                    )
                ):
                    log.warning("node %s: %s", printable(state.node_id), invalid)
                    sub.queue.put_nowait(Invalid(invalid))
                    return
                elif kind == "ack":
                    ack = message.ack
                    await paced(state)
                    if not await self._nodes.ack(state.node_id, ack.version, ack.payload_sha256):
                        invalid = (
                            f"ack: v{ack.version} with that payload_sha256 was never published "
                            f"for node group {state.group!r}"
                        )
                        log.warning("node %s: %s", printable(state.node_id), invalid)
                        sub.queue.put_nowait(Invalid(invalid))
                        return
                    state.applied = max(state.applied, ack.version)
                    state.runs = (ack.version, bytes(ack.payload_sha256))
                elif kind == "nack":
                    nack = message.nack
                    await paced(state)
                    state.base = state.runs  # it still runs what it ran: the next delta starts there
                    log.warning(
                        "node %s refused v%d: %s",
                        printable(state.node_id),
                        nack.version,
                        printable(nack.reason, MAX_REASON_LOG_CHARS),
                    )
                    pair = (nack.version, bytes(nack.payload_sha256))
                    state.refused.add(pair)  # at once: a push racing the write below skips it
                    # Only a snapshot of its group that exists stays remembered: a node inventing
                    # versions cannot push real refusals out.
                    if not await self._nodes.nack(state.node_id, *pair, nack.reason):
                        state.refused.discard(pair)
                    if self.metrics is not None:
                        self.metrics.nacks.inc()
                elif kind == "heartbeat" and elapsed() >= state.seen_due:
                    state.seen_due = elapsed() + min(SEEN_WRITE_INTERVAL, self._nodes.stale_after / 4)
                    await self._nodes.seen(state.node_id)
        except grpc.aio.AioRpcError:
            pass  # the node went away; the stream ends below
        except Exception as exc:
            # E.g. the database is unreachable: end this stream with its status (the node
            # reconnects with backoff and says it again) rather than let the error escape the
            # stream's cleanup, or end it OK as if the node had closed it.
            mapped = status_for(exc)
            if mapped is None:
                log.exception("config sync with node %s failed", printable(state.node_id))
                mapped = (grpc.StatusCode.INTERNAL, "internal error")
            else:
                log.warning("config sync with node %s failed: %s", printable(state.node_id), exc)
            sub.queue.put_nowait(Invalid(mapped[1], mapped[0]))
        finally:
            # The node closed its side (or went away): end our side too.
            sub.queue.put_nowait(CLOSED)
