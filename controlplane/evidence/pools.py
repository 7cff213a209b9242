"""Ingest's parsing processes: a ``ProcessPoolExecutor`` that can be stopped even when one of
its processes is stuck (stopped, thrashing, or looping on its input). The pool's own
``shutdown`` cannot: it waits for each process to read its request to end, which a stuck one
never does (``controlplane.evidence.ingest`` takes such a pool out of service, and closes it
when the control plane stops)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.process import BaseProcess
from typing import cast

log = logging.getLogger("controlplane.evidence.ingest")


def new_pool(workers: int) -> ProcessPoolExecutor:
    # spawn: forking a process that runs gRPC's threads is not safe.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _processes(pool: ProcessPoolExecutor) -> list[BaseProcess]:
    processes: dict[int, BaseProcess] = getattr(pool, "_processes", None) or {}
    return list(processes.values())


def kill(pool: ProcessPoolExecutor) -> None:
    """Kill ``pool``'s processes at once (a stuck one does not end on request)."""
    for process in _processes(pool):
        with contextlib.suppress(OSError):
            process.kill()


def stop(pool: ProcessPoolExecutor, grace: float) -> None:
    """Stop ``pool``, each process given ``grace`` seconds to end its batch and killed after
    that. Blocks: run it off the event loop."""
    running = {process.sentinel: process for process in _processes(pool)}
    pool.shutdown(wait=False, cancel_futures=True)
    # Each process's sentinel becomes ready when it exits: waited on without reaping it, which
    # the pool's own thread does (a join here would race that thread's).
    ends = time.monotonic() + grace
    while running and (left := ends - time.monotonic()) > 0:
        for sentinel in multiprocessing.connection.wait(list(running), timeout=left):
            del running[cast(int, sentinel)]
    for process in running.values():
        log.warning("evidence ingest: a parsing process did not end within %g s; killed", grace)
        with contextlib.suppress(OSError):
            process.kill()
    pool.shutdown(wait=True)  # the pool's thread, once its processes are gone
