"""Batches reach the parsing process through shared memory and come back parsed exactly as
on this process; a slot is reused only when its task is over; without shared memory, or for
a batch too large for it, batches still parse (by pipe)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from controlplane.evidence import handover
from controlplane.evidence.handover import Handover
from controlplane.evidence.records import Parsed, parse_lines
from tests.controlplane.evidence.conftest import write_records
from tests.controlplane.evidence.test_records import columns
from tests.helpers import eventually

NODE = "node-a"
CHAIN = f"{NODE}/0"
RECEIVED = 1_796_000_000.0


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


def segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith("psm_")}


async def test_a_batch_parses_in_the_worker_as_here_and_its_segment_is_removed_on_close(
    tmp_path: Path, pool: ProcessPoolExecutor
) -> None:
    lines = await write_records(tmp_path, NODE, 300)
    edited = [*lines[:200], lines[200].replace(b'"acme"', b'"acne"'), *lines[201:]]
    before = segments()
    shared = Handover(1)
    try:
        for batch in (lines, edited, lines[:5]):
            got = await shared.parse(pool, CHAIN, NODE, batch, RECEIVED)
            assert columns(got) == columns(parse_lines(CHAIN, NODE, batch, RECEIVED))
        assert got.seqs == [1, 2, 3, 4, 5]
        refused = (await shared.parse(pool, CHAIN, NODE, edited, RECEIVED)).refused
        assert refused is not None
        assert "line 201" in refused.message
        made = segments() - before
        assert len(made) == 1  # one slot, reused
        more = await write_records(tmp_path / "more", NODE, 12_000)  # outgrows the segment
        got = await shared.parse(pool, CHAIN, NODE, more[:10_000], RECEIVED)
        assert columns(got) == columns(parse_lines(CHAIN, NODE, more[:10_000], RECEIVED))
        grown = segments() - before
        assert len(grown) == 1
        assert grown != made
    finally:
        shared.close()
    assert segments() == before


async def test_rows_that_outgrow_their_room_come_back_by_pipe(
    tmp_path: Path, pool: ProcessPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = await write_records(tmp_path, NODE, 300)
    monkeypatch.setattr(handover, "ROW_BYTES_OVER_LINE", -500)  # room for a fraction of the rows
    monkeypatch.setattr(handover, "MIN_SEGMENT_BYTES", 0)
    shared = Handover(1)
    try:
        got = await shared.parse(pool, CHAIN, NODE, lines, RECEIVED)
    finally:
        shared.close()
    assert columns(got) == columns(parse_lines(CHAIN, NODE, lines, RECEIVED))


async def test_without_shared_memory_batches_go_by_pipe(
    tmp_path: Path,
    pool: ProcessPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = await write_records(tmp_path, NODE, 300)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(handover, "SharedMemory", refuse)
    shared = Handover(1)
    with caplog.at_level(logging.WARNING, logger=handover.__name__):
        for _ in range(2):
            got = await shared.parse(pool, CHAIN, NODE, lines, RECEIVED)
            assert columns(got) == columns(parse_lines(CHAIN, NODE, lines, RECEIVED))
    assert [r.getMessage() for r in caplog.records] == [
        "evidence ingest: no shared memory for the parsing processes ([Errno 28] No space left on "
        "device); batches go to them by pipe from now on"
    ]
    shared.close()


async def test_a_batch_too_large_for_a_segment_goes_by_pipe(
    tmp_path: Path, pool: ProcessPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = await write_records(tmp_path, NODE, 300)
    monkeypatch.setattr(handover, "MAX_SEGMENT_BYTES", 100_000)
    before = segments()
    shared = Handover(1)
    got = await shared.parse(pool, CHAIN, NODE, lines, RECEIVED)
    assert columns(got) == columns(parse_lines(CHAIN, NODE, lines, RECEIVED))
    assert segments() == before
    shared.close()


class GatedPool(ThreadPoolExecutor):
    """One thread that runs each task only once ``gate`` is set (``running`` is set when
    one has started): a batch that is being parsed, held there."""

    def __init__(self) -> None:
        super().__init__(1)
        self.gate = threading.Event()
        self.running = threading.Event()
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1

        def gated() -> Any:
            self.running.set()
            self.gate.wait(30)
            return fn(*args, **kwargs)

        return super().submit(gated)


async def test_a_slot_whose_batch_was_cancelled_is_reused_only_when_its_task_is_over(tmp_path: Path) -> None:
    lines = await write_records(tmp_path, NODE, 300)
    gated = GatedPool()
    shared = Handover(1)
    try:
        first = asyncio.ensure_future(shared.parse(gated, CHAIN, NODE, lines, RECEIVED))
        await eventually(gated.running.is_set)
        first.cancel()  # the stream went away while its batch is in the worker
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.ensure_future(shared.parse(gated, CHAIN, NODE, lines[:10], RECEIVED))
        for _ in range(20):  # every chance to take the slot and pack into it: it must not
            await asyncio.sleep(0)
        assert (second.done(), gated.submitted) == (False, 1)
        gated.gate.set()
        got: Parsed = await asyncio.wait_for(second, 30)
        assert gated.submitted == 2
        assert columns(got) == columns(parse_lines(CHAIN, NODE, lines[:10], RECEIVED))
    finally:
        gated.gate.set()
        gated.shutdown(wait=True)
        shared.close()
