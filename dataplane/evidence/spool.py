"""The node's evidence spool: the records written but not yet acknowledged by the control
plane, bounded, with each tenant's declared policy for when the bound is exceeded.

**What is counted.** ``Spool.size`` is the bytes of the chain's remaining segment files
(``dataplane.evidence.segments``) after the shipper's cursor: what would be lost if the
disk were lost now, and what the control plane still has to take. The log adds each
record's bytes as it writes it (``written``); the shipper adds what the control plane
acknowledged (``acked``) and subtracts the segments it prunes from both.

**The bound.** ``--evidence-spool-max-bytes`` (default 2 GiB). It applies to a node that
ships (a control plane is configured): a node that never ships (air-gapped, serving a
pinned snapshot) never prunes, its records leave only through an export, and its disk is
the operator's to watch. When the spool exceeds the bound, each tenant's declared
``evidence.spool_full`` policy (in the snapshot's ``Tenant``) applies:

- ``serve_and_alarm`` (the default): the tenant keeps being served and every record is
  written; the node logs an ERROR with the spool's size at most once a minute
  (``alarm_interval``) for as long as the bound is exceeded, ``alarms`` counts those lines
  and ``status()`` reports the spool (size, bound, over or not) for health and metrics.
- ``refuse``: the tenant's new requests end with UNAVAILABLE, ``evidence spool full
  (tenant policy refuse)``, before they reach a model; ``refusals`` counts them. Each such
  refusal still gets its evidence record, like every refused request: the spool may grow
  by those small records, never by a served answer of that tenant.

No record is ever dropped: the bound decides whether a request is served, never whether
its record is written. When shipping drains the spool below the bound the alarm clears
(logged once at INFO) and refusals stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("signalbox.dataplane.evidence.spool")

DEFAULT_SPOOL_MAX_BYTES = 2 * 1024 * 1024 * 1024
ALARM_INTERVAL_S = 60.0


class Spool:
    """Counts of one node's unacknowledged evidence bytes and what the bound did; used from
    the event loop only."""

    def __init__(
        self,
        max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        *,
        alarm_interval: float = ALARM_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("the evidence spool bound must be a positive number of bytes")
        self.max_bytes = max_bytes
        self._alarm_interval = alarm_interval
        self._clock = clock
        self.written = 0
        """Bytes in the chain's remaining segment files."""
        self.acked = 0
        """Of them, the bytes the control plane acknowledged."""
        self.bounded = False
        """True once a shipper ships this spool: only then does the bound apply."""
        self.alarms = 0
        """ERROR lines logged about the bound being exceeded."""
        self.refusals = 0
        """Requests refused under a tenant's ``refuse`` policy."""
        self._alarmed_at: float | None = None

    @property
    def size(self) -> int:
        """Bytes written and not acknowledged."""
        return max(0, self.written - self.acked)

    @property
    def over(self) -> bool:
        """True while the bound applies and is exceeded (no logging; see ``check``)."""
        return self.bounded and self.size > self.max_bytes

    def check(self) -> bool:
        """``over``, logging the alarm (at most once per ``alarm_interval``) or its clearing."""
        if self.over:
            now = self._clock()
            if self._alarmed_at is None or now - self._alarmed_at >= self._alarm_interval:
                self._alarmed_at = now
                self.alarms += 1
                log.error(
                    "evidence spool full: %d bytes not acknowledged by the control plane (bound %d); "
                    "tenants with policy refuse are refused, the others are served",
                    self.size,
                    self.max_bytes,
                )
            return True
        if self._alarmed_at is not None:
            self._alarmed_at = None
            log.info("evidence spool below its bound again: %d bytes (bound %d)", self.size, self.max_bytes)
        return False

    def refuses(self, refuse: bool) -> bool:
        """True when a request of a tenant whose policy is ``refuse`` (else serve_and_alarm)
        must be refused now."""
        if self.check() and refuse:
            self.refusals += 1
            return True
        return False

    def pruned(self, nbytes: int) -> None:
        """``nbytes`` of acknowledged segments were deleted."""
        self.written -= nbytes
        self.acked -= nbytes

    def status(self) -> dict[str, Any]:
        """The spool as plain data, for the node's status and metrics."""
        return {
            "bytes": self.size,
            "max_bytes": self.max_bytes,
            "bounded": self.bounded,
            "over": self.over,
            "alarms": self.alarms,
            "refusals": self.refusals,
        }
