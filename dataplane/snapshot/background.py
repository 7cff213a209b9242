"""A worker thread for snapshot work that gives way to serving.

Applying a snapshot costs a node CPU proportional to its size even as a delta: rebuilding
the payload, SHA-256 and the Ed25519 check over megabytes (the signature covers the full
payload, by design). Requests must not wait for it. Two things make it give way:

- The thread runs at the lowest scheduling priority (nice 19, Linux: per thread). Hashing
  and signature checks release the GIL, so while they run the event loop thread competes
  only for the CPU, and the kernel gives it nearly all of it (weight 1024 against 15).
- While snapshot work runs, the interpreter's switch interval is 0.5 ms instead of 5 ms:
  when the worker holds the GIL (copying, compiling the changed entries) the event loop
  waits at most that long for it, not ten times as long.

On systems where a thread's priority cannot be lowered the work still runs, at normal
priority.
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

P = ParamSpec("P")
R = TypeVar("R")


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted: normal priority
        log.debug("snapshot worker keeps its priority: %s", exc)


class BackgroundWorker:
    """One low-priority thread; ``run`` awaits a call made on it. Use from one event loop."""

    def __init__(self, name: str = "snapshot-apply") -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=name, initializer=_lower_priority
        )
        self._running = 0
        self._saved_interval = sys.getswitchinterval()

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self._running == 0:
            self._saved_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._saved_interval, FAST_SWITCH_S))
        self._running += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        finally:
            self._running -= 1
            if self._running == 0:
                sys.setswitchinterval(self._saved_interval)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
