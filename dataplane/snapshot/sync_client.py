"""The node's side of ConfigSyncService.Sync: subscribe, apply, acknowledge, reconnect.

The node opens the bidirectional stream, says Hello (who it is and what it
already serves), then applies every envelope the control plane sends and
answers each with an Ack or a Nack carrying the reason. When the control plane
is unreachable or the stream breaks, the node keeps serving its last-known-good
and reconnects after ``uniform(0, min(cap, base * 2**failures))`` seconds ("full
jitter"), so a control-plane restart does not bring every node back at once.
The cap is small (3 s by default): after an outage of any length a node is back
within about that long of the control plane's return, and the uniform draw still
spreads a fleet's reconnects over the whole window.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

import signalbox
from dataplane.config.model import DeploymentMode, Scope
from dataplane.snapshot.compile import MODE_TO_PROTO
from dataplane.snapshot.store import ApplyResult, SnapshotStore
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2, sync_pb2_grpc
from signalbox.tls import ClientTls, aio_channel

log = logging.getLogger("signalbox.dataplane.sync")

_HEALTHY_STREAM_S = 5.0
"""A stream that stayed up this long resets the backoff, even if it carried nothing."""


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

    @property
    def status(self) -> SyncStatus:
        return SyncStatus(
            self._connected, self._connects, self._failures, self._last_error, self._last_result
        )

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
            except Exception as exc:
                # Whatever broke this session, the node must keep trying to sync:
                # a dead sync task would silently freeze its configuration.
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("config sync session with %s failed", self._target)
            finally:
                self._connected = False
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

        async def requests() -> AsyncIterator[sync_pb2.NodeMessage]:
            while (message := await outbox.get()) is not None:
                yield message

        # A fresh channel per attempt: our own backoff decides when to retry, not
        # the channel's internal reconnect timer.
        async with aio_channel(self._target, self._tls) as channel:
            stub = sync_pb2_grpc.ConfigSyncServiceStub(channel)
            call = stub.Sync(requests())
            self._connects += 1
            try:
                async for message in call:
                    self._connected = True
                    self._failures = 0
                    if message.WhichOneof("message") != "envelope":
                        continue
                    result = await self._store.apply(message.envelope)
                    self._last_result = result
                    outbox.put_nowait(self._answer(result))
            finally:
                outbox.put_nowait(None)
                call.cancel()

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
