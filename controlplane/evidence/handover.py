"""A batch to a parsing process and its rows back through shared memory, not pipes.

Through ``ProcessPoolExecutor``'s pipes, a batch of 2,000 lines (~1.5 MB) was pickled to
the worker and its rows (~2.5 MB) pickled back: copied into and out of 64 KB pipe buffers
with a context switch each time, into fresh allocations page-faulted in both processes.
That was ~3 us a record of the control plane's ~12 (bench/README.md, ``evidence_ingest.py``).

Here each task the pool runs has a slot: a shared-memory segment this process packs the
lines into (``_rows.pack``, one copy) and the worker writes the rows into after them
(``records.parse_packed_lines``), reading each line where it lies. Only the columns (seqs,
hashes, ends...) travel by pickle; the rows are copied out once. There are as many slots
as workers, so at most that many batches are in the pool at once (the others wait for a
slot here rather than in the pool's queue), and a slot is reused only once its task is
over, even when the batch's stream went away meanwhile. A segment grows to the largest
batch it has carried, up to ``MAX_SEGMENT_BYTES``; a larger batch, or a host without
shared memory, is pickled as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from multiprocessing.shared_memory import SharedMemory
from typing import TypeVar

from controlplane.evidence.native import rows as _rows
from controlplane.evidence.records import Parsed, parse_lines, parse_packed_lines

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_SEGMENT_BYTES = 64 << 20
"""A batch whose lines and rows need more is pickled: a slot keeps its segment's size."""
MIN_SEGMENT_BYTES = 4 << 20
ROW_BYTES_OVER_LINE = 512
"""What a line's COPY row needs beyond the line itself, at most in practice (its filter
columns are copies of some of its members); a batch whose rows need more still parses,
its rows coming back by pickle."""
ATTACHED_PER_WORKER = 4
"""Segments a worker keeps mapped (a slot's old segment, once grown, is let go of here)."""

_attached: dict[str, SharedMemory] = {}
"""The worker process's mappings, by segment name, oldest first."""


def parse_in_segment(
    name: str, count: int, used: int, chain_id: str, node_id: str, received: float
) -> tuple[Parsed, int]:
    """In the worker: ``parse_packed_lines`` of the ``count`` lines packed in the first
    ``used`` bytes of segment ``name``, the rows written after them (at ``rows_at(used)``)."""
    segment = _attached.get(name)
    if segment is None:
        while len(_attached) >= ATTACHED_PER_WORKER:
            _detach(_attached.pop(next(iter(_attached))))
        segment = _attached[name] = SharedMemory(name)
    buffer = segment.buf
    assert buffer is not None
    with buffer[:used] as data, buffer[rows_at(used) :] as out:
        return parse_packed_lines(chain_id, node_id, data, count, out, received)


def _detach(segment: SharedMemory) -> None:
    with contextlib.suppress(BufferError):  # a view of it is still alive: the collector unmaps it
        segment.close()


class ParseOverdue(Exception):
    """The pool did not parse a batch within its deadline (seconds, the argument)."""


def _reserved(size: int) -> SharedMemory:
    """A new segment of ``size`` bytes whose pages are allocated now. ``/dev/shm`` is a tmpfs,
    which allocates a page when it is first written, and a page written past the tmpfs's
    size (64 MiB in a container by default, PostgreSQL's own segments included) is SIGBUS:
    this process or the worker killed while packing or parsing. Allocated here, a full
    ``/dev/shm`` is ENOSPC instead, and the batch goes by pipe."""
    segment = SharedMemory(create=True, size=size)
    try:
        os.posix_fallocate(segment._fd, 0, segment.size)  # type: ignore[attr-defined]  # its descriptor
    except BaseException:
        segment.close()
        segment.unlink()
        raise
    return segment


def rows_at(used: int) -> int:
    """Where the rows start after ``used`` bytes of packed lines (8-byte aligned)."""
    return (used + 7) & ~7


@dataclasses.dataclass(slots=True)
class _Slot:
    segment: SharedMemory | None = None

    def fit(self, size: int) -> SharedMemory:
        """This slot's segment, replaced by a larger one if it is under ``size`` bytes."""
        if self.segment is None or self.segment.size < size:
            self.drop()
            self.segment = _reserved(max(size + size // 4, MIN_SEGMENT_BYTES))
        return self.segment

    def drop(self) -> None:
        segment, self.segment = self.segment, None
        if segment is not None:
            _detach(segment)
            segment.unlink()


class Handover:
    """The slots of one pool's ``workers`` processes."""

    def __init__(self, workers: int) -> None:
        self._slots = [_Slot() for _ in range(workers)]
        self._free: asyncio.Queue[_Slot] | None = None
        self._working = _rows is not None
        """False once shared memory failed on this host: batches are pickled from then on."""
        self._full = False
        """The last segment wanted did not fit in ``/dev/shm``: its batch was pickled."""

    async def parse(
        self,
        pool: Executor,
        chain_id: str,
        node_id: str,
        lines: Sequence[bytes],
        received: float,
        *,
        deadline: float | None = None,
    ) -> Parsed:
        """``parse_lines`` of ``lines`` in one of ``pool``'s processes; ``ParseOverdue``
        when the pool has not answered within ``deadline`` seconds of taking the batch (the
        wait for a slot not counted): its process is stuck, and the caller's to stop."""
        loop = asyncio.get_running_loop()
        batch = lines if type(lines) is list else list(lines)

        async def within(work: asyncio.Future[T]) -> T:
            try:
                async with asyncio.timeout(deadline):
                    return await work
            except TimeoutError:
                raise ParseOverdue(deadline) from None

        def by_pipe() -> asyncio.Future[Parsed]:
            return loop.run_in_executor(pool, parse_lines, chain_id, node_id, batch, received)

        if not self._working or _rows is None:
            return await within(by_pipe())
        used = _rows.packed_size(batch)
        size = rows_at(used) + used + ROW_BYTES_OVER_LINE * len(batch)
        if size > MAX_SEGMENT_BYTES:
            return await within(by_pipe())
        if self._free is None:
            self._free = asyncio.Queue()
            for slot in self._slots:
                self._free.put_nowait(slot)
        slot = await self._free.get()
        task: Future[tuple[Parsed, int]] | None = None
        try:
            try:
                segment = slot.fit(size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.ENOMEM):
                    if not self._full:  # once while it lasts, not once a batch
                        self._full = True
                        log.warning(
                            "evidence ingest: shared memory is full (%s); batches go to the "
                            "parsing processes by pipe until there is room again",
                            exc,
                        )
                else:
                    self._working = False
                    log.warning(
                        "evidence ingest: no shared memory for the parsing processes (%s); "
                        "batches go to them by pipe from now on",
                        exc,
                    )
                return await within(by_pipe())
            if self._full:
                self._full = False
                log.warning("evidence ingest: shared memory has room again; batches go through it")
            buffer = segment.buf
            assert buffer is not None
            _rows.pack(batch, buffer)
            task = pool.submit(parse_in_segment, segment.name, len(batch), used, chain_id, node_id, received)
            parsed, rows = await within(asyncio.wrap_future(task))
            if rows >= 0:
                at = rows_at(used)
                parsed = dataclasses.replace(parsed, rows=bytes(buffer[at : at + rows]))
            return parsed
        finally:
            if task is None or task.done():
                self._free.put_nowait(slot)
            else:
                # Cancelled while the worker still writes to the segment: the slot is free
                # only once it is done.
                task.add_done_callback(lambda _: self._release_soon(loop, slot))

    def _release_soon(self, loop: asyncio.AbstractEventLoop, slot: _Slot) -> None:
        free = self._free
        assert free is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the control plane is stopping
            loop.call_soon_threadsafe(free.put_nowait, slot)

    def close(self) -> None:
        """Remove the segments (after the pool is shut down)."""
        for slot in self._slots:
            slot.drop()
