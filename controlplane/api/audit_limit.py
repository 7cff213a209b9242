"""A bound on the audit rows unauthenticated admin calls may write, per peer.

Every admin call is audited, refused ones too; but a scanner without a token must not
be able to fill the audit table. Per peer address (the port is dropped: a scanner
opens many connections), the first ``rows`` unauthenticated calls of a window are
audited one by one; the rest are counted, and when the window ends one summary row
says how many more there were. The number of peers tracked is bounded too: beyond
``max_peers`` live windows, the others share one window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

OTHER_PEERS = "(other peers)"
WriteSummary = Callable[[str, int], Coroutine[Any, Any, None]]


def peer_address(peer: str) -> str:
    """``ipv4:10.0.0.1:5555`` -> ``ipv4:10.0.0.1``; ``ipv6:[::1]:5555`` -> ``ipv6:[::1]``."""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, sep, port = peer.rpartition(":")
        if sep and port.isdigit() and host not in ("ipv4", "ipv6"):
            return host
    return peer[:200]


@dataclass(slots=True)
class _Window:
    start: float
    written: int = 0
    suppressed: int = 0
    timer: asyncio.TimerHandle | None = None


class UnauthenticatedAuditLimit:
    """Decides per unauthenticated call whether it gets its own audit row."""

    def __init__(
        self,
        write_summary: WriteSummary,
        *,
        rows: int = 20,
        window: float = 60.0,
        max_peers: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write_summary = write_summary
        self.rows = rows
        self.window = window
        self.max_peers = max_peers
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._writes: set[asyncio.Task[None]] = set()

    def admit(self, peer: str) -> bool:
        """True: audit this call; False: it is counted into the peer's summary row."""
        now = self._clock()
        key = peer_address(peer)
        current = self._windows.get(key)
        if current is not None and now >= current.start + self.window:
            self._end(key, current)
            current = None
        if current is None:
            if len(self._windows) >= self.max_peers:
                self._prune(now)
            if len(self._windows) >= self.max_peers:
                key = OTHER_PEERS
                current = self._windows.get(key)
            if current is None:
                current = self._windows[key] = _Window(now)
        if current.written < self.rows:
            current.written += 1
            return True
        current.suppressed += 1
        if current.timer is None:
            log.warning(
                "more than %d unauthenticated admin calls from %s within %.0fs: auditing them as one row",
                self.rows,
                key,
                self.window,
            )
            delay = max(0.0, current.start + self.window - now)
            current.timer = asyncio.get_running_loop().call_later(delay, self._expire, key, current)
        return False

    def _prune(self, now: float) -> None:
        for key, window in list(self._windows.items()):
            if now >= window.start + self.window:
                self._end(key, window)

    def _expire(self, key: str, window: _Window) -> None:
        window.timer = None
        self._end(key, window)

    def _end(self, key: str, window: _Window) -> None:
        if self._windows.get(key) is window:
            del self._windows[key]
        if window.timer is not None:
            window.timer.cancel()
            window.timer = None
        if window.suppressed:
            count, window.suppressed = window.suppressed, 0
            task = asyncio.get_running_loop().create_task(self._write_summary(key, count))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def close(self) -> None:
        """End every window now (writing its summary row) and wait for the writes."""
        for key, window in list(self._windows.items()):
            self._end(key, window)
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
