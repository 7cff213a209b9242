"""The node's side of ConfigSyncService.Sync: subscribe, apply, acknowledge, reconnect.

The node opens the bidirectional stream, says Hello (who it is and what it
already serves), then applies every envelope the control plane sends and
answers each with an Ack or a Nack carrying the reason. A snapshot may come as a
delta against the one the node serves (``SnapshotStore.apply_delta``): rebuilt into
the full payload and verified as if sent whole; when it cannot be rebuilt here the
node answers Resync and gets the snapshot whole. When the control plane
is unreachable or the stream breaks, the node keeps serving its last-known-good
and reconnects after ``uniform(0, min(cap, base * 2**failures))`` seconds ("full
jitter"), so a control-plane restart does not bring every node back at once.
The cap is small (3 s by default): after an outage of any length a node is back
within about that long of the control plane's return, and the uniform draw still
spreads a fleet's reconnects over the whole window.

While connected the node sends a Heartbeat every ``heartbeat_interval`` seconds
(15 s by default), so the control plane's ``last_seen`` is proof that the node
itself is alive, not merely that its stream is open. Messages up to
``max_message_bytes`` (64 MiB by default) are received; when a snapshot is larger,
or does not decode, gRPC ends the stream and the node reports the failure in
the Hello of its next stream, where the control plane records it as a NACK.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

import signalbox
from dataplane.config.model import DeploymentMode, Scope
from dataplane.snapshot.compile import MODE_TO_PROTO
from dataplane.snapshot.hash_key import HashKeys
from dataplane.snapshot.store import ApplyResult, SnapshotStore
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2, sync_pb2_grpc
from signalbox.tls import ClientTls

log = logging.getLogger("signalbox.dataplane.sync")

_HEALTHY_STREAM_S = 5.0
"""A stream that stayed up this long resets the backoff, even if it carried nothing."""

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest sync message (one signed snapshot) a node accepts unless configured otherwise."""

_TOO_LARGE = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")


def delivery_failure(exc: grpc.aio.AioRpcError) -> sync_pb2.DeliveryFailure | None:
    """What to tell the control plane when ``exc`` means we could not take its message."""
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        match = _TOO_LARGE.search(details)
        if match:
            size, limit = int(match.group(1)), int(match.group(2))
            return sync_pb2.DeliveryFailure(
                reason=f"snapshot of {size} bytes exceeds this node's limit of {limit} bytes",
                message_bytes=size,
            )
        return sync_pb2.DeliveryFailure(reason=f"snapshot refused by this node: {details[:200]}")
    if exc.code() == grpc.StatusCode.INTERNAL and "deserializ" in details.lower():
        return sync_pb2.DeliveryFailure(reason="snapshot message did not decode on this node")
    return None


def full_jitter(failures: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect attempt number ``failures`` (1, 2, ...); never above ``cap``."""
    # Capping the exponent too: 2.0 ** 1100 overflows, and failures grow without bound.
    return rand() * min(cap, base * 2.0 ** min(max(0, failures - 1), 64))


@dataclass(frozen=True, slots=True)
class SyncStatus:
    connected: bool
    connects: int
    """Streams opened so far (the first connection counts as 1)."""
    failures: int
    """Consecutive failed or broken connections."""
    last_error: str
    last_result: ApplyResult | None


class SyncClient:
    """Keeps one node subscribed to the control plane for as long as ``run`` runs."""

    def __init__(
        self,
        target: str,
        store: SnapshotStore,
        *,
        node_id: str,
        mode: DeploymentMode,
        scope: Scope,
        backoff_base: float = 0.5,
        backoff_cap: float = 3.0,
        tls: ClientTls | None = None,
        heartbeat_interval: float = 15.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._target = target
        self._store = store
        self._node_id = node_id
        self._mode = mode
        self._scope = scope
        self._base = backoff_base
        self._cap = backoff_cap
        self._tls = tls if tls is not None else ClientTls()
        self._connected = False
        self._connects = 0
        self._failures = 0
        self._last_error = ""
        self._last_result: ApplyResult | None = None
        self._heartbeat = heartbeat_interval
        self._max_message_bytes = max_message_bytes
        self._outbox: asyncio.Queue[sync_pb2.NodeMessage | None] | None = None
        self._reconnect_now = False
        self._failure: sync_pb2.DeliveryFailure | None = None
        """Why the last stream's message could not be taken; told in the next Hello."""

    @property
    def status(self) -> SyncStatus:
        return SyncStatus(
            self._connected, self._connects, self._failures, self._last_error, self._last_result
        )

    def reconnect(self) -> None:
        """End the current stream gracefully and open a new one at once (e.g. with a renewed
        certificate: the TLS handshake is the only place a certificate is presented)."""
        self._reconnect_now = True
        if self._outbox is not None:
            self._outbox.put_nowait(None)  # half-close: the control plane ends its side

    def hello(self) -> sync_pb2.NodeMessage:
        return sync_pb2.NodeMessage(
            hello=sync_pb2.Hello(
                node_id=self._node_id,
                software_version=signalbox.__version__,
                mode=MODE_TO_PROTO[self._mode],
                scope=snapshot_pb2.Scope(
                    deployment=self._scope.deployment,
                    node_group=self._scope.node_group,
                    site=self._scope.site,
                ),
                applied_version=self._store.version,
                applied_hash=self._store.payload_sha256,
                delivery_failure=self._failure,
                accepts_delta=True,
            )
        )

    async def run(self) -> None:
        """Sync until cancelled; never raises for control-plane trouble."""
        while True:
            opened = time.monotonic()
            try:
                await self._session()
                self._last_error = "control plane closed the stream"
            except grpc.aio.AioRpcError as exc:
                self._last_error = f"{exc.code().name}: {exc.details()}"
                failure = delivery_failure(exc)
                if failure is not None:
                    self._failure = failure
                    log.warning("could not take a snapshot from %s: %s", self._target, failure.reason)
            except Exception as exc:
                # Whatever broke this session, the node must keep trying to sync:
                # a dead sync task would silently freeze its configuration.
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("config sync session with %s failed", self._target)
            finally:
                self._connected = False
            if self._reconnect_now:
                self._reconnect_now = False
                log.info("reconnecting to %s", self._target)
                continue
            if time.monotonic() - opened >= _HEALTHY_STREAM_S:
                self._failures = 0
            self._failures += 1
            delay = full_jitter(self._failures, self._base, self._cap)
            log.info(
                "config sync with %s lost (%s); retrying in %.2fs, serving snapshot %s meanwhile",
                self._target,
                self._last_error,
                delay,
                self._store.version or "none",
            )
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        outbox: asyncio.Queue[sync_pb2.NodeMessage | None] = asyncio.Queue()
        outbox.put_nowait(self.hello())
        self._outbox = outbox

        async def requests() -> AsyncIterator[sync_pb2.NodeMessage]:
            while (message := await outbox.get()) is not None:
                yield message

        # A fresh channel per attempt: our own backoff decides when to retry, not
        # the channel's internal reconnect timer.
        async with self._channel() as channel:
            stub = sync_pb2_grpc.ConfigSyncServiceStub(channel)
            call = stub.Sync(requests())
            self._connects += 1
            beats = asyncio.create_task(self._beat(outbox), name="sync-heartbeat")
            try:
                async for message in call:
                    self._failure = None  # told in this stream's Hello
                    self._connected = True
                    self._failures = 0
                    if keys := _hash_keys(message):
                        await self._store.set_api_key_hash_keys(keys)
                    kind = message.WhichOneof("message")
                    if kind == "envelope":
                        result = await self._store.apply(message.envelope)
                    elif kind == "delta":
                        result = await self._store.apply_delta(message.delta)
                    else:
                        continue
                    if result.resync:
                        # Not a verdict on the snapshot: we cannot rebuild it here. Ask for
                        # it whole.
                        outbox.put_nowait(
                            sync_pb2.NodeMessage(
                                resync=sync_pb2.Resync(
                                    version=self._store.version, reason=result.reason[:500]
                                )
                            )
                        )
                        continue
                    self._last_result = result
                    outbox.put_nowait(self._answer(result))
            finally:
                self._outbox = None
                beats.cancel()
                outbox.put_nowait(None)
                call.cancel()

    def _channel(self) -> grpc.aio.Channel:
        options = [
            ("grpc.max_receive_message_length", self._max_message_bytes),
            ("grpc.max_send_message_length", self._max_message_bytes),
        ]
        creds = self._tls.credentials(self._target)
        if creds is None:
            return grpc.aio.insecure_channel(self._target, options=options)
        return grpc.aio.secure_channel(self._target, creds, options=options)

    async def _beat(self, outbox: asyncio.Queue[sync_pb2.NodeMessage | None]) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            outbox.put_nowait(
                sync_pb2.NodeMessage(heartbeat=sync_pb2.Heartbeat(applied_version=self._store.version))
            )

    @staticmethod
    def _answer(result: ApplyResult) -> sync_pb2.NodeMessage:
        if result.accepted:
            return sync_pb2.NodeMessage(
                ack=sync_pb2.Ack(version=result.version, payload_sha256=result.payload_sha256)
            )
        return sync_pb2.NodeMessage(
            nack=sync_pb2.Nack(
                version=result.version, payload_sha256=result.payload_sha256, reason=result.reason
            )
        )


def _hash_keys(message: sync_pb2.ServerMessage) -> HashKeys | None:
    """The API-key hash key versions a message carries: every live one, or (a control plane of
    an earlier version) its one key, version 1; None when it carries none or bad ones."""
    try:
        if message.api_key_hash_keys:
            return HashKeys.of((k.version, k.key) for k in message.api_key_hash_keys)
        if message.api_key_hash_key:
            return HashKeys({1: message.api_key_hash_key})
    except ValueError as exc:
        log.error("API-key hash key versions ignored: %s", exc)
    return None
