"""Batches reach the parsing process through shared memory and come back parsed exactly as
on this process; a slot is reused only when its task is over; without shared memory, or for
a batch too large for it, batches still parse (by pipe)."""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import subprocess
import sys
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
        raise OSError(errno.ENOENT, "No such file or directory")  # a host without /dev/shm

    monkeypatch.setattr(handover, "SharedMemory", refuse)
    shared = Handover(1)
    with caplog.at_level(logging.WARNING, logger=handover.__name__):
        for _ in range(2):
            got = await shared.parse(pool, CHAIN, NODE, lines, RECEIVED)
            assert columns(got) == columns(parse_lines(CHAIN, NODE, lines, RECEIVED))
    assert [r.getMessage() for r in caplog.records] == [
        "evidence ingest: no shared memory for the parsing processes ([Errno 2] No such file or "
        "directory); batches go to them by pipe from now on"
    ]
    shared.close()


async def test_while_shared_memory_is_full_batches_go_by_pipe_and_nothing_is_left_in_it(
    tmp_path: Path,
    pool: ProcessPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = await write_records(tmp_path, NODE, 300)
    full = [True, True]  # /dev/shm has no room for the first two segments wanted, then has
    allocate = os.posix_fallocate

    def fallocate(fd: int, offset: int, size: int) -> None:
        if full and full.pop():
            raise OSError(errno.ENOSPC, "No space left on device")
        allocate(fd, offset, size)

    monkeypatch.setattr(handover.os, "posix_fallocate", fallocate)
    before = segments()
    shared = Handover(1)
    try:
        with caplog.at_level(logging.WARNING, logger=handover.__name__):
            for _ in range(2):
                got = await shared.parse(pool, CHAIN, NODE, lines, RECEIVED)
                assert columns(got) == columns(parse_lines(CHAIN, NODE, lines, RECEIVED))
                assert segments() == before  # the segment that did not fit was removed
            got = await shared.parse(pool, CHAIN, NODE, lines, RECEIVED)
            assert columns(got) == columns(parse_lines(CHAIN, NODE, lines, RECEIVED))
            assert len(segments() - before) == 1  # through shared memory again
    finally:
        shared.close()
    assert [r.getMessage() for r in caplog.records] == [
        "evidence ingest: shared memory is full ([Errno 28] No space left on device); batches go "
        "to the parsing processes by pipe until there is room again",
        "evidence ingest: shared memory has room again; batches go through it",
    ]
    assert segments() == before


SMALL_SHM = """
import asyncio, multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from controlplane.evidence.handover import Handover
from controlplane.evidence.records import parse_lines
from tests.controlplane.evidence.conftest import write_records
from tests.controlplane.evidence.test_records import columns

async def main() -> None:
    lines = await write_records(Path(sys.argv[1]), "node-a", 1000)
    assert sum(map(len, lines)) > 256 << 10  # more than the tmpfs holds
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        shared = Handover(1)
        try:
            got = await shared.parse(pool, "node-a/0", "node-a", lines, 1_796_000_000.0)
        finally:
            shared.close()
    assert columns(got) == columns(parse_lines("node-a/0", "node-a", lines, 1_796_000_000.0))
    print("parsed", len(got.seqs))

asyncio.run(main())
"""


def test_a_dev_shm_too_small_for_a_segment_is_no_crash(tmp_path: Path) -> None:
    # A tmpfs of 256 KiB over /dev/shm in a mount namespace of its own, and a batch whose
    # lines alone outgrow it: written into without its pages allocated first, the segment
    # was SIGBUS in the middle of packing, and the process died.
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--mount", "--map-root-user"]
    script = 'mount -t tmpfs -o size=256k tmpfs /dev/shm && exec "$0" -c "$1" "$2"'
    result = subprocess.run(
        [*unshare, "sh", "-c", script, sys.executable, SMALL_SHM, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout == "parsed 1000\n"
    assert "shared memory is full" in result.stderr


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
