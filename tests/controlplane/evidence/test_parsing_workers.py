"""A parsing process that dies (the OOM killer, a signal, a crash) does not stop ingest: its
batch is parsed again in a fresh pool, and a batch that kills a second one is refused
UNAVAILABLE, nothing of it written, while the next batches are stored as usual."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.evidence.ingest import PARSE_ATTEMPTS, POOL_MIN_LINES, EvidenceIngest
from tests.controlplane.evidence.conftest import Stream, write_records
from tests.fixtures.postgres import RunningControlPlane, sql_rows
from tests.helpers import eventually

BATCH = POOL_MIN_LINES + 44  # parsed in the pool


def stored_seqs(evidence_plane: RunningControlPlane) -> list[int]:
    return [
        r[0] for r in sql_rows(evidence_plane.database_url, "SELECT seq FROM evidence_records ORDER BY seq")
    ]


def alarms(evidence_plane: RunningControlPlane) -> list[Any]:
    return sql_rows(evidence_plane.database_url, "SELECT kind FROM evidence_alarms")


def ingest_of(evidence_plane: RunningControlPlane) -> EvidenceIngest:
    ingest = evidence_plane.cp.evidence
    assert ingest is not None
    return ingest


async def test_a_parsing_process_killed_between_batches_is_replaced_and_the_next_batch_stored(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], caplog: pytest.LogCaptureFixture
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", 2 * BATCH)
    ack = await stream.ship("node-a/0", lines[:BATCH])
    assert (ack.head_seq, ack.HasField("error")) == (BATCH, False)
    pool = ingest_of(evidence_plane)._pool
    assert pool is not None
    workers = list(pool._processes)  # type: ignore[attr-defined]  # the pool's own processes
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)

    with caplog.at_level(logging.WARNING, logger="controlplane.evidence.ingest"):
        ack = await stream.ship("node-a/0", lines[BATCH:])

    assert (ack.head_seq, ack.stored, ack.HasField("error")) == (2 * BATCH, BATCH, False)
    assert stored_seqs(evidence_plane) == list(range(1, 2 * BATCH + 1))
    assert alarms(evidence_plane) == []
    assert "a parsing process died with the batch of chain 'node-a/0'" in caplog.text
    replaced = ingest_of(evidence_plane)._pool
    assert replaced is not None
    assert replaced is not pool
    assert not set(replaced._processes) & set(workers)  # type: ignore[attr-defined]


class DyingPool(ProcessPoolExecutor):
    """A real pool whose process exits on whatever it is given: a batch that kills it."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(os._exit, 70)


async def test_a_batch_that_kills_a_fresh_pool_too_is_refused_unavailable_and_the_next_one_stored(
    evidence_plane: RunningControlPlane,
    node: tuple[Stream, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", BATCH)
    ingest = ingest_of(evidence_plane)
    made: list[ProcessPoolExecutor] = []
    real_new_pool = ingest._new_pool

    def new_pool() -> ProcessPoolExecutor:
        pool = (
            DyingPool(1, mp_context=multiprocessing.get_context("spawn"))
            if len(made) < PARSE_ATTEMPTS
            else real_new_pool()
        )
        made.append(pool)
        return pool

    old = ingest._pool
    if old is not None:  # the control plane warmed a pool at start: start from new ones
        ingest._replace(old)
    monkeypatch.setattr(ingest, "_new_pool", new_pool)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.ship("node-a/0", lines)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == (
        f"chain 'node-a/0': the process parsing this batch died {PARSE_ATTEMPTS} times; resend it"
    )
    assert len(made) == PARSE_ATTEMPTS
    assert stored_seqs(evidence_plane) == []  # nothing of it written
    # The node resends on a new stream: a third pool, which parses it.
    resent = Stream(stream.channel)
    try:
        ack = await resent.ship("node-a/0", lines)
    finally:
        resent.close()
    assert (ack.head_seq, ack.stored, ack.HasField("error")) == (BATCH, BATCH, False)
    assert len(made) == PARSE_ATTEMPTS + 1
    assert stored_seqs(evidence_plane) == list(range(1, BATCH + 1))
    assert alarms(evidence_plane) == []


async def test_a_stuck_parsing_process_is_stopped_its_batch_refused_and_the_next_one_stored(
    evidence_plane: RunningControlPlane,
    node: tuple[Stream, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", 2 * BATCH)
    ack = await stream.ship("node-a/0", lines[:BATCH])
    assert (ack.head_seq, ack.HasField("error")) == (BATCH, False)
    ingest = ingest_of(evidence_plane)
    pool = ingest._pool
    assert pool is not None
    workers = [process for process in pool._processes.values()]  # type: ignore[attr-defined]
    for process in workers:
        os.kill(process.pid, signal.SIGSTOP)  # stuck: alive, and never answering
    monkeypatch.setattr(ingest, "_parse_deadline", 1.0)

    with (
        caplog.at_level(logging.WARNING, logger="controlplane.evidence.ingest"),
        pytest.raises(grpc.aio.AioRpcError) as refused,
    ):
        await stream.ship("node-a/0", lines[BATCH:])

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == "chain 'node-a/0': this batch was not parsed within 1 s; resend it"
    assert "the batch of chain 'node-a/0' was not parsed within 1 s" in caplog.text
    for process in workers:  # stopped for good, not left behind
        # Polled, not joined: the pool's own thread reaps its processes too, and a join that
        # loses that race to waitpid() returns before the exit code is recorded.
        await eventually(lambda p=process: p.exitcode == -signal.SIGKILL, timeout=10, message="killed")
    assert stored_seqs(evidence_plane) == list(range(1, BATCH + 1))
    resent = Stream(stream.channel)
    try:
        ack = await resent.ship("node-a/0", lines[BATCH:])
    finally:
        resent.close()
    assert (ack.head_seq, ack.stored, ack.HasField("error")) == (2 * BATCH, BATCH, False)
    assert ingest._pool is not None
    assert ingest._pool is not pool


async def test_closing_ingest_with_a_stuck_parsing_process_ends_within_its_grace(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    """A control plane stopping closes ingest: a parsing process that is alive but never
    answers (stopped, thrashing, looping) used to hold that close, and so the whole stop
    (the metrics endpoint, the database engine after it) for good."""
    stream, directory = node
    ack = await stream.ship("node-a/0", await write_records(directory, "node-a", BATCH))
    assert (ack.head_seq, ack.HasField("error")) == (BATCH, False)
    ingest = ingest_of(evidence_plane)
    pool = ingest._pool
    assert pool is not None
    workers = list(pool._processes.values())  # type: ignore[attr-defined]
    for process in workers:
        os.kill(process.pid, signal.SIGSTOP)
    closing = asyncio.ensure_future(asyncio.to_thread(ingest.close, 1.0))
    try:
        started = time.monotonic()
        done, _ = await asyncio.wait([closing], timeout=20)
        assert done, "close() still waits for the stuck process after 20 s"
        assert time.monotonic() - started < 10
        closing.result()
    finally:
        for process in workers:  # let a close that waits end, whatever the test found
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
        await closing
    for process in workers:
        await eventually(lambda p=process: p.exitcode == -signal.SIGKILL, timeout=10, message="killed")
    assert ingest._pool is None
