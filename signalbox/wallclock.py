"""Waiting for an instant of the wall clock (a certificate's renewal time or expiry).

``asyncio.sleep`` and ``asyncio.timeout`` run on the monotonic clock. That is right for a
duration, and wrong for "until 14:00 UTC": a wall clock stepped forward (an NTP correction
of a node that booted behind) does not move it, and on Linux it stands still while a VM is
suspended. One long sleep computed from the wall clock then wakes late by the step or the
suspension: a certificate renewed at two thirds of its lifetime would be renewed after it
expired. Waiting in short slices and reading the wall clock again after each wakes on time,
within a slice, whatever the clock did meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

RECHECK_SECONDS = 30.0
"""The longest slice of a wait for a wall-clock instant."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def elapsed() -> float:
    """Seconds on a clock no wall-clock step moves and that (on Linux) counts a suspension
    too, unlike the monotonic clock: for how long something lasted, whatever the wall clock did."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


def seconds_until(deadline: datetime, now: Callable[[], datetime] = utc_now) -> float:
    """Wall-clock seconds from now to ``deadline`` (negative once it passed)."""
    return (deadline - now()).total_seconds()


async def sleep_until(
    deadline: datetime, *, now: Callable[[], datetime] = utc_now, recheck: float = RECHECK_SECONDS
) -> None:
    """Return once the wall clock (``now``) reads ``deadline`` or later."""
    while True:
        left = seconds_until(deadline, now)
        if left <= 0:
            return
        await asyncio.sleep(min(left, recheck))
