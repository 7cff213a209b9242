"""The snapshot worker gives way to serving: idle scheduling while it works, a small sure
share (nice 19) once it has waited too long, a short GIL switch interval while it works,
and the interval restored afterwards."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from dataplane.snapshot import background
from dataplane.snapshot.background import FAST_SWITCH_S, LOWEST_PRIORITY, BackgroundWorker


def _seen() -> tuple[int, float, str]:
    return os.sched_getscheduler(0), sys.getswitchinterval(), threading.current_thread().name


async def test_work_runs_idle_with_a_short_switch_interval_and_the_loop_keeps_its_own() -> None:
    worker = BackgroundWorker()
    before = sys.getswitchinterval()
    try:
        policy, interval, name = await worker.run(_seen)
    finally:
        worker.close()
    assert policy == os.SCHED_IDLE
    assert interval == FAST_SWITCH_S
    assert name.startswith("snapshot-apply")
    assert sys.getswitchinterval() == before
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the event loop's thread


async def test_work_that_waited_too_long_takes_a_share_at_the_lowest_priority(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(background, "ESCALATE_AFTER_S", 0.05)
    worker = BackgroundWorker()

    def until_escalated() -> tuple[int, int]:
        deadline = time.monotonic() + 10
        while os.sched_getscheduler(0) == os.SCHED_IDLE and time.monotonic() < deadline:
            time.sleep(0.01)  # this thread's own polling: the loop escalates it meanwhile
        return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    try:
        policy, nice = await worker.run(until_escalated)
        again, _, _ = await worker.run(_seen)
    finally:
        worker.close()
    assert (policy, nice) == (os.SCHED_OTHER, LOWEST_PRIORITY)
    assert again == os.SCHED_IDLE  # each piece of work starts idle again


async def test_an_exception_in_the_work_restores_the_switch_interval() -> None:
    worker = BackgroundWorker()
    before = sys.getswitchinterval()

    def fails() -> None:
        raise ValueError("boom")

    try:
        with pytest.raises(ValueError, match="boom"):
            await worker.run(fails)
    finally:
        worker.close()
    assert sys.getswitchinterval() == before


async def test_work_on_a_node_serving_nothing_starts_at_nice_19_not_idle() -> None:
    """Nothing to protect, and on a host busy with other processes idle time may never come."""
    worker = BackgroundWorker(busy=lambda: False)

    def seen() -> tuple[int, int]:
        return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    try:
        assert await worker.run(seen) == (os.SCHED_OTHER, LOWEST_PRIORITY)
    finally:
        worker.close()
