"""How a quota lease is granted: the arithmetic both ledgers share.

Two ledgers hand out quota: the control plane's (``controlplane.quota``, state in
PostgreSQL, for every node of a group) and an air-gapped node's own (``dataplane.quota.local``,
state in memory and budgets in the node's data dir, for the workers of that node). Both grant
by the rules here, so a limit means the same thing whether a node is connected or not; only
where the state lives differs. Pure functions over one ledger row: no I/O.

- A rate (requests or tokens per minute) is a token bucket that refills at limit/60 per
  second up to ``burst_seconds`` of the limit; a lease takes what it holds, and each holder
  may also take its fair share of the refill since its last lease (``fair_share``).
- A budget (nano-USD per UTC day or month) is ``used``: what was leased in the window minus
  what holders handed back, plus what they overspent; nothing is granted past the limit (the
  control plane counts it per holder, against each one's evidence: ``controlplane.quota``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

HOLDER_TTL_S = 10.0
"""A holder that has not leased a limit for this long no longer counts in its fair share."""


@dataclass(slots=True)
class Row:
    """The state of one limit in one window, as a ledger stores it."""

    level: float = 0.0
    """Rates: units in the bucket (below zero: owed)."""
    used: int = 0
    """Budgets: units leased in the window and not handed back."""
    updated_at: float = 0.0
    """Seconds of the last grant, by the ledger's clock (unix seconds on the control plane, a
    monotonic clock for an air-gapped node's in-memory rates)."""
    holders: dict[str, float] = field(default_factory=dict)
    """Holder -> seconds of its last lease, by the same clock (rates' fair share)."""


@dataclass(frozen=True, slots=True)
class Grant:
    granted: int
    exhausted: bool
    refill_seconds: float = 0.0


def capacity(limit: int, burst_seconds: float) -> float:
    """What a rate's bucket holds when full."""
    return limit * burst_seconds / 60.0


def grant_budget(row: Row, *, limit: int, want: int, returned: int, overspent: int, int_max: int) -> Grant:
    """Take back ``returned`` (not once the window is used up), count ``overspent``, then grant
    up to ``want`` within ``limit`` (``returned`` and ``overspent`` only when they are of the
    row's window: the caller checks). The air-gapped ledger's: the control plane also weighs
    each holder's count against its shipped evidence (``controlplane.quota``), by the same rule
    for hand-backs."""
    used = row.used
    if used < limit:
        # Once a window is used up it stays so until it ends (or the limit is raised): what a
        # holder hands back after that is counted as spent, never granted again. Otherwise
        # the leftover of each exhausted holder reopened the window for a moment, and every
        # holder read "not exhausted" and started over (the budget leaked a request a cycle).
        used -= min(returned, used)
    used = min(used + overspent, int_max)
    granted = max(0, min(want, limit - used))
    row.used = used + granted
    return Grant(granted, row.used >= limit)


def grant_rate(
    row: Row,
    *,
    limit: int,
    burst_seconds: float,
    want: int,
    returned: int,
    overspent: int,
    now: float,
    holder: str,
) -> Grant:
    """Refill the bucket to ``now``, take back ``returned``, put ``overspent`` in debt, then
    grant up to ``want`` from what it holds or ``holder``'s fair share of the refill."""
    rate = limit / 60.0
    cap = capacity(limit, burst_seconds)
    elapsed = max(0.0, now - row.updated_at)
    # Overspent tokens put the bucket in debt: it refills from below zero.
    level = min(cap, row.level + elapsed * rate + returned) - overspent
    granted = min(want, max(0, math.floor(level), fair_share(row, now, holder, rate, cap)))
    row.level = level - granted
    row.updated_at = now
    short = want - granted
    return Grant(
        granted,
        row.level < 1.0,
        max(0.0, short - row.level) / rate if short > 0 else 0.0,
    )


def fair_share(row: Row, now: float, holder: str, rate: float, cap: float) -> int:
    """What ``holder`` may take even from an empty bucket: its equal share of the refill
    since its last lease (max-min fairness). A holder that asks more often (the busy one)
    would otherwise take every token as it refills and starve the quiet ones; with this a
    holder using less than 1/n of the limit always gets it, and the rest goes to whoever
    asks. The bucket may go below zero by these shares: it refills from there, so all
    holders together still get at most the limit."""
    holders = {h: seen for h, seen in row.holders.items() if now - seen < HOLDER_TTL_S}
    last = holders.get(holder)
    holders[holder] = now
    row.holders = holders
    if last is None or not holder:
        return 0
    return math.floor(min(cap, (now - last) * rate) / len(holders))


def window_end(window: str) -> float | None:
    """Unix seconds at which a budget's UTC window ends ("2026-11-30": a day, "2026-11": a
    month); None when ``window`` is neither."""
    for layout, daily in (("%Y-%m-%d", True), ("%Y-%m", False)):
        try:
            start = datetime.strptime(window, layout).replace(tzinfo=UTC)
        except ValueError:
            continue
        end = start + timedelta(days=1) if daily else (start + timedelta(days=32)).replace(day=1)
        return end.timestamp()
    return None


def window_seconds_left(window: str, now: float) -> float:
    """What a grant says of its budget ``window`` at the ledger's ``now`` (unix seconds): the
    seconds until it ends, which a node counts down on its own monotonic clock rather than
    comparing the window with its wall clock (``dataplane.quota.buckets``)."""
    end = window_end(window)
    return 0.0 if end is None else max(end - now, 0.0)
