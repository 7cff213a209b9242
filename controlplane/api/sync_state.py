"""A sync stream's state and the checks on what a node says on it
(``controlplane.api.sync``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from controlplane.limits import DEFAULT_GROUP, INT64_MAX
from controlplane.services.identity import NodeIdentity
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.wallclock import elapsed

MAX_REFUSED_PER_STREAM = 64
"""Refused (version, hash) pairs a stream remembers, the newest versions kept. Only the
newest snapshot (whole or as deltas to it) is ever sent, so an old refusal forgotten costs at
most one more NACK; without a bound a node NACKing in a loop grew each stream's memory."""
SHA256_BYTES = 32
ANSWERS_PER_SECOND = 20
"""ACKs and NACKs a stream writes per second at most: a node sends one per snapshot it is
sent; one sending them in a loop drove a database transaction (and a log line) each, as fast
as it could send. Beyond the rate its stream is read no faster (gRPC flow control holds the
node's sends)."""
SEEN_WRITE_INTERVAL = 5.0
"""Seconds between two writes of a node's heartbeats per stream at most (a quarter of
``--node-stale-after`` when that is shorter): a node sends one every 15 s; one sending them
in a loop made a database write each."""


@dataclass(frozen=True, slots=True)
class Invalid:
    """What the reader puts in the inbox to end the stream with ``code`` and ``message`` (the
    reader cannot end the call itself): a node's malformed message (INVALID_ARGUMENT), or the
    database failing under what the node said (UNAVAILABLE: the node reconnects and says it
    again; ended OK, it took the stream for closed as usual and its ACK was never recorded)."""

    message: str
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT


def recorded_scope(scope: snapshot_pb2.Scope, certified: NodeIdentity | None) -> dict[str, Any]:
    """The scope recorded for the node: the Hello's, with the certificate's site (the Hello may
    only repeat it or leave it out)."""
    recorded = MessageToDict(scope, preserving_proto_field_name=True)
    if certified is not None:
        recorded.pop("site", None)
        if certified.site:
            recorded["site"] = certified.site
    return recorded


def check_answer(kind: str, version: int, sha256: bytes) -> str | None:
    """Why an ACK or NACK cannot be recorded, or None. The wire's uint64 goes to a bigint
    column and the hash is stored as given: past int64 the write fails (the stream ended with
    a traceback), and an unbounded hash on every NACK row lets a node fill the database."""
    if version > INT64_MAX:
        return f"{kind}.version: at most {INT64_MAX} (got {version})"
    if len(sha256) > SHA256_BYTES:
        return f"{kind}.payload_sha256: at most {SHA256_BYTES} bytes (got {len(sha256)})"
    return None


class RefusedVersions:
    """The (version, payload hash) pairs a node refused: at most ``MAX_REFUSED_PER_STREAM``,
    the lowest version forgotten first."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: list[tuple[int, bytes]] | None = None) -> None:
        self._pairs: set[tuple[int, bytes]] = set()
        for pair in pairs or ():
            self.add(pair)

    def add(self, pair: tuple[int, bytes]) -> None:
        self._pairs.add(pair)
        if len(self._pairs) > MAX_REFUSED_PER_STREAM:
            self._pairs.discard(min(self._pairs))

    def discard(self, pair: tuple[int, bytes]) -> None:
        self._pairs.discard(pair)

    def __contains__(self, pair: object) -> bool:
        return pair in self._pairs

    def __len__(self) -> int:
        return len(self._pairs)


@dataclass(slots=True)
class StreamState:
    node_id: str
    identity: NodeIdentity
    applied: int
    group: str = DEFAULT_GROUP
    last_sent: int = 0
    refused: RefusedVersions = field(default_factory=RefusedVersions)
    accepts_delta: bool = False
    base: tuple[int, bytes] = (0, b"")
    """What the node will run once it took everything sent: the base of the next delta."""
    runs: tuple[int, bytes] = (0, b"")
    """What the node last said it runs (Hello, ACK)."""
    whole_next: bool = False
    """The node asked for the newest snapshot whole (it could not rebuild a delta)."""
    seen_due: float = 0.0
    """When (``signalbox.wallclock.elapsed``) the node's next heartbeat is written."""
    next_write: float = 0.0
    """When (``elapsed``) the next ACK or NACK may be written (``paced``)."""


async def paced(state: StreamState) -> None:
    """Wait until the stream may write its next ACK or NACK (``ANSWERS_PER_SECOND``)."""
    wait = state.next_write - elapsed()
    if wait > 0:
        await asyncio.sleep(wait)
    state.next_write = max(elapsed(), state.next_write) + 1 / ANSWERS_PER_SECOND
