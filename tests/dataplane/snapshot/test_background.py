"""The snapshot worker gives way to serving: lowest priority, short GIL switch interval
while it works, and the interval restored afterwards."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from dataplane.snapshot.background import FAST_SWITCH_S, LOWEST_PRIORITY, BackgroundWorker


def _seen() -> tuple[int, float, str]:
    return (
        os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
        sys.getswitchinterval(),
        threading.current_thread().name,
    )


async def test_work_runs_at_the_lowest_priority_with_a_short_switch_interval() -> None:
    worker = BackgroundWorker()
    before = sys.getswitchinterval()
    try:
        priority, interval, name = await worker.run(_seen)
    finally:
        worker.close()
    assert priority == LOWEST_PRIORITY
    assert interval == FAST_SWITCH_S
    assert name.startswith("snapshot-apply")
    assert sys.getswitchinterval() == before
    # The event loop's own thread keeps its priority.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != LOWEST_PRIORITY


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
