"""A worker thread for snapshot work that gives way to serving.

Applying a snapshot costs a node CPU proportional to its size even as a delta: SHA-256
and the Ed25519 check over megabytes (the signature covers the full payload, by design),
writing the last-known-good. Requests must not wait for it. Three things make it give way:

- While the node is serving requests, the work starts under ``SCHED_IDLE`` (Linux): the
  thread runs only on CPU time nothing else wants, and a serving thread that wakes up
  preempts it at once. (A node serving nothing has nothing to protect, and on a host busy
  with other processes idle time may never come: it starts at nice 19.) Hashing and the
  signature check release the GIL, so the event loop then competes for nothing at all.
- Idle time can run out on a saturated node, and a node that never applies (a revoked key
  keeps working) is worse than a slower request: after ``idle_wait`` seconds the thread
  moves to normal scheduling at the lowest priority (nice 19: a small, sure share).
- While snapshot work runs, the interpreter's switch interval is 0.5 ms instead of 5 ms:
  when the worker holds the GIL (copying, compiling the changed entries) the event loop
  waits at most that long for it.

Where a thread's scheduling cannot be changed (not Linux, or not permitted) the work still
runs, at normal priority.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

LOWEST_PRIORITY = 19
FAST_SWITCH_S = 0.0005
"""The GIL switch interval while snapshot work runs."""
ESCALATE_AFTER_S = 5.0
"""Default: how long work may wait for idle CPU before it takes a small share of busy CPU
(``--snapshot-idle-wait-seconds``). On a saturated core, 1 s added ~1.3 ms to the p99 of the
requests served meanwhile and 5 s ~0.8 ms (bench/apply_under_load.py), for a node that
converges that much later while saturated; below saturation there is idle time and the
wait does not matter."""

P = ParamSpec("P")
R = TypeVar("R")


def _schedule(tid: int, *, idle: bool) -> None:
    """``tid`` under SCHED_IDLE, or under normal scheduling at nice 19."""
    try:
        if idle:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, tid, LOWEST_PRIORITY)
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted: as it was
        log.debug("snapshot worker keeps its scheduling: %s", exc)


class BackgroundWorker:
    """One low-priority thread; ``run`` awaits a call made on it. Use from one event loop."""

    def __init__(
        self,
        name: str = "snapshot-apply",
        *,
        idle_wait: float | None = None,
        busy: Callable[[], bool] = lambda: True,
    ) -> None:
        self._idle_wait = idle_wait
        self._busy = busy
        self._tid = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=self._started)
        self._running = 0
        self._saved_interval = sys.getswitchinterval()

    def _started(self) -> None:
        self._tid = threading.get_native_id()
        _schedule(self._tid, idle=False)

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        if self._running == 0:
            self._saved_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._saved_interval, FAST_SWITCH_S))
        self._running += 1
        wait = ESCALATE_AFTER_S if self._idle_wait is None else self._idle_wait
        escalate = loop.call_later(wait, self._escalate)
        try:
            call = functools.partial(self._idle_then, self._busy(), fn, *args, **kwargs)
            return await loop.run_in_executor(self._executor, call)
        finally:
            escalate.cancel()
            self._running -= 1
            if self._running == 0:
                sys.setswitchinterval(self._saved_interval)

    def _idle_then(self, idle: bool, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        _schedule(self._tid, idle=idle)
        return fn(*args, **kwargs)

    def _escalate(self) -> None:
        if self._tid:
            _schedule(self._tid, idle=False)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
