"""The request path's side of rate limits and budgets: local buckets of leased quota.

Every limit of a request's tenant and key (requests/min, tokens/min, budget per day and per
month) is a ``Bucket`` holding quota this node leased from the control plane
(``dataplane.quota.leaser``). ``Quotas.admit`` takes a request's share from each: one
request, its estimated tokens (input + max output), its worst-case cost. All or nothing:
when one bucket is short the others are given back and the request is refused with
``LimitExceeded`` naming the limit. ``Quotas.settle`` gives back the difference between the
estimate and what the request really used (or takes the extra: a bucket may go below zero,
and then refuses until refilled). Nothing here does I/O: dict lookups and arithmetic
(``Quotas.reserve`` at most waits for the leaser's next round, for a budget short only of a
lease).

While the control plane is unreachable the tenant's ``on_unreachable`` applies: fail closed
refuses its limited requests (``QuotaUnavailable``); fail open keeps enforcing, refilling each
bucket locally at the rate of the last leases it got. A bucket never leased admits on credit
(one request) until its first lease (``dataplane.quota.leaser``). A budget the ledger reported
used up refuses until its window ends, whatever it holds (``Quotas.exhaust``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from dataplane.config.model import LimitsConfig, TenantConfig
from dataplane.errors import LimitExceeded, OverBudget, QuotaUnavailable


class Kind(IntEnum):
    """Mirrors ``signalbox.api.config.v1.QuotaKind``."""

    REQUESTS_PER_MINUTE = 1
    TOKENS_PER_MINUTE = 2
    BUDGET_DAY = 3
    BUDGET_MONTH = 4


KIND_LABEL = {
    Kind.REQUESTS_PER_MINUTE: "requests per minute",
    Kind.TOKENS_PER_MINUTE: "tokens per minute",
    Kind.BUDGET_DAY: "budget per day",
    Kind.BUDGET_MONTH: "budget per month",
}
BUDGETS = (Kind.BUDGET_DAY, Kind.BUDGET_MONTH)

ScopeKey = tuple[str, str, Kind]
"""(tenant id, API key id or "", kind)."""


def limit_of(limits: LimitsConfig, kind: Kind) -> int:
    if kind is Kind.REQUESTS_PER_MINUTE:
        return limits.requests_per_minute
    if kind is Kind.TOKENS_PER_MINUTE:
        return limits.tokens_per_minute
    if kind is Kind.BUDGET_DAY:
        return limits.budget_day_nanos
    return limits.budget_month_nanos


def window_end(kind: Kind, window: str, now: float) -> float:
    """Unix seconds at which a budget's UTC ``window`` ("2026-11-30", "2026-11") ends; the
    current day's or month's end when ``window`` does not parse."""
    try:
        start = datetime.strptime(window, "%Y-%m-%d" if kind is Kind.BUDGET_DAY else "%Y-%m").replace(
            tzinfo=UTC
        )
    except ValueError:
        start = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if kind is not Kind.BUDGET_DAY:
            start = start.replace(day=1)
    if kind is Kind.BUDGET_DAY:
        return (start + timedelta(days=1)).timestamp()
    return (start + timedelta(days=32)).replace(day=1).timestamp()


class Bucket:
    """Quota of one limit held by this node."""

    __slots__ = (
        "asked",
        "exhausted",
        "exhausted_until",
        "fail_closed",
        "granted_rate",
        "holding",
        "label",
        "lapsed",
        "largest",
        "leased",
        "limit",
        "refill_seconds",
        "refilled_at",
        "scope",
        "window",
        "window_ends",
    )

    def __init__(self, scope: ScopeKey, label: str, limit: int, fail_closed: bool) -> None:
        self.scope = scope
        self.label = label
        self.limit = limit
        self.fail_closed = fail_closed
        self.holding = 0.0
        """Units leased and not yet used (below zero: owed after a request used more than estimated)."""
        self.asked = 0.0
        """Units requests asked for since the last lease (served or refused): the demand."""
        self.largest = 0.0
        """The largest single ask since the last lease: a lease is never smaller."""
        self.leased = False
        self.exhausted = False
        """The ledger's last word: nothing is left for this limit (until its refill or next window)."""
        self.exhausted_until = 0.0
        """Budgets: the end of the window the ledger reported exhausted (``Quotas`` clock);
        until then the bucket admits nothing, whatever it holds (``Quotas.exhaust``)."""
        self.refill_seconds = 0.0
        self.window = ""
        self.lapsed = 0
        """Budgets: how many windows have ended on this bucket (``Reservation.windows``)."""
        self.window_ends = 0.0
        """Budgets: when ``window`` ends (``Quotas`` clock; 0: not said). What the bucket holds
        then was leased for that window: void in the next (``Quotas._draw``)."""
        self.granted_rate = 0.0
        """Units per second the last leases granted: the local refill rate when failing open."""
        self.refilled_at = 0.0

    def take(self, units: float, now: float) -> bool:
        self.asked += units
        if units > self.largest:
            self.largest = units
        if self.holding >= units and now >= self.exhausted_until:
            self.holding -= units
            return True
        return False

    def refill_locally(self, now: float) -> None:
        """Fail open: the rate of the last leases, at most a lease period and a bit held."""
        if self.refilled_at:
            cap = max(self.granted_rate * 2.0, self.largest)
            if self.holding < cap:
                self.holding = min(cap, self.holding + (now - self.refilled_at) * self.granted_rate)
        self.refilled_at = now


@dataclass(slots=True)
class Reservation:
    """What ``admit`` took for one request: settled once, when the request ends."""

    tokens: float
    cost_nanos: float
    token_buckets: tuple[Bucket, ...]
    budget_buckets: tuple[Bucket, ...]
    windows: tuple[int, ...] = ()
    """Each budget bucket's ``lapsed`` when the request was admitted."""
    settled: bool = False


class Quotas:
    """The buckets of one node; the leaser fills them, requests draw from them."""

    def __init__(self, *, lease_interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_interval = lease_interval
        self.buckets: dict[ScopeKey, Bucket] = {}
        self.reachable = True
        """False while leasing fails (the control plane is unreachable)."""
        self.short: Callable[[], None] = lambda: None
        """Called when a bucket runs short: the leaser renews at once."""
        self._clock = clock
        self._renewal: asyncio.Event | None = None
        self.wall: Callable[[], float] = time.time
        """This node's wall clock (unix seconds): only for a ledger that does not say when an
        exhausted budget's window ends (``exhaust``)."""

    def now(self) -> float:
        """This node's clock for buckets (monotonic seconds)."""
        return self._clock()

    def bucket(self, tenant: TenantConfig, key_id: str, limits: LimitsConfig, kind: Kind) -> Bucket | None:
        limit = limit_of(limits, kind)
        if not limit:
            return None
        scope = (tenant.id, key_id, kind)
        bucket = self.buckets.get(scope)
        fail_closed = tenant.limits.fail_closed if tenant.limits is not None else False
        if bucket is None:
            owner = f"api key {key_id} of tenant {tenant.name}" if key_id else f"tenant {tenant.name}"
            bucket = self.buckets[scope] = Bucket(scope, f"{owner} {KIND_LABEL[kind]}", limit, fail_closed)
        else:
            bucket.limit, bucket.fail_closed = limit, fail_closed
        return bucket

    def admit(
        self,
        tenant: TenantConfig,
        key_id: str,
        key_limits: LimitsConfig | None,
        tokens: int,
        cost_nanos: int,
    ) -> Reservation | None:
        """Take one request, ``tokens`` and ``cost_nanos`` from every limit of the tenant and
        the key; None when neither has limits. Raises ``LimitExceeded`` / ``QuotaUnavailable``."""
        owners: list[tuple[str, LimitsConfig]] = []
        if tenant.limits is not None:
            owners.append(("", tenant.limits))
        if key_limits is not None and key_id:
            owners.append((key_id, key_limits))
        if not owners:
            return None
        taken: list[tuple[Bucket, float]] = []
        token_buckets: list[Bucket] = []
        budget_buckets: list[Bucket] = []
        now = self._clock()
        try:
            for kind, units in (
                (Kind.REQUESTS_PER_MINUTE, 1.0),
                (Kind.TOKENS_PER_MINUTE, float(tokens)),
                (Kind.BUDGET_DAY, float(cost_nanos)),
                (Kind.BUDGET_MONTH, float(cost_nanos)),
            ):
                for key, limits in owners:
                    bucket = self.bucket(tenant, key, limits, kind)
                    if bucket is None:
                        continue
                    if units > bucket.limit and kind in BUDGETS:
                        # Never admissible, whatever is held or leased: not a wait.
                        raise OverBudget(bucket.label, cost_nanos, bucket.limit)
                    self._draw(bucket, units, now)
                    taken.append((bucket, units))
                    if kind is Kind.TOKENS_PER_MINUTE:
                        token_buckets.append(bucket)
                    elif kind in BUDGETS:
                        budget_buckets.append(bucket)
        except (LimitExceeded, QuotaUnavailable) as exc:
            for bucket, units in taken:
                bucket.holding += units
            if not isinstance(exc, OverBudget):  # no lease can help that one
                self.short()
            raise
        return Reservation(
            float(tokens),
            float(cost_nanos),
            tuple(token_buckets),
            tuple(budget_buckets),
            tuple(b.lapsed for b in budget_buckets),
        )

    async def reserve(
        self,
        tenant: TenantConfig,
        key_id: str,
        key_limits: LimitsConfig | None,
        tokens: int,
        cost_nanos: int,
    ) -> Reservation | None:
        """``admit``, except that a budget with room left by the ledger's word, short only of
        a lease (a burst, the node's first requests, a new window), waits for that lease, at
        most a lease period, rather than refuse the request."""
        until = time.monotonic() + self.lease_interval
        while True:
            try:
                return self.admit(tenant, key_id, key_limits, tokens, cost_nanos)
            except LimitExceeded as exc:
                left = until - time.monotonic()
                if not (exc.pending and left > 0):
                    raise
            await self.renewal(left)

    def _draw(self, bucket: Bucket, units: float, now: float) -> None:
        if bucket.window_ends and now >= bucket.window_ends and self.reachable:
            # The budget's window ended: what the bucket holds was leased for it, and spent in
            # the next window no ledger would count it there (the ledger takes back only what
            # is handed back in the window it was leased in). The new window starts as a
            # bucket never leased (one request on credit, counted by its first lease); a debt
            # is kept.
            bucket.holding = min(bucket.holding, 0.0)
            bucket.leased = bucket.exhausted = False
            bucket.window_ends = 0.0
            bucket.lapsed += 1
        if not self.reachable:
            if bucket.fail_closed:
                bucket.asked += units
                raise QuotaUnavailable(bucket.label, self.lease_interval)
            if not bucket.leased and not bucket.granted_rate:
                bucket.asked += units
                return  # failing open with no lease to go by: not enforced
            # (A budget whose window ended is not leased for the new one, yet its last leases'
            # rate still holds: failing open, it is spent at that rate.)
            bucket.refill_locally(now)
        elif not bucket.leased:
            # One request on credit until the first lease, which takes the debt (``leaser``):
            # a node's first request is not refused for want of a lease, and it still counts;
            # others wait for that lease (a few milliseconds away).
            bucket.asked += units
            bucket.largest = max(bucket.largest, units)
            self.short()
            if bucket.holding < 0:
                # Raised as made, never held in a local: its traceback holds this frame.
                raise LimitExceeded(
                    bucket.label,
                    self.lease_interval,
                    "quota lease pending",
                    pending=bucket.scope[2] in BUDGETS,
                )
            bucket.holding -= units
            return
        if bucket.take(units, now):
            if bucket.holding < bucket.largest:
                self.short()
            return
        raise LimitExceeded(
            bucket.label,
            self._retry_after(bucket, units, now),
            pending=(
                self.reachable
                and bucket.scope[2] in BUDGETS
                and not bucket.exhausted
                and now >= bucket.exhausted_until
            ),
        )

    async def renewal(self, timeout: float) -> None:
        """Wait until the leaser's next round ends (``renewed``), at most ``timeout`` seconds."""
        if self._renewal is None:
            self._renewal = asyncio.Event()
        event = self._renewal
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()

    def renewed(self) -> None:
        """A lease round ended (or failed): wake the requests waiting for it."""
        event, self._renewal = self._renewal, None
        if event is not None:
            event.set()

    def exhaust(self, bucket: Bucket, window: str, seconds_left: float = 0.0) -> None:
        """The ledger reported ``bucket``'s budget ``window`` used up, ``seconds_left`` before
        it ends by the ledger's clock: refuse until then, whatever the bucket holds or is handed
        back meanwhile. Counted down on this node's monotonic clock: its wall clock may be hours
        off the ledger's (the window would end at once, or in years). Only a ledger that does not
        say (0: an earlier version) has the window's end taken from this node's wall clock."""
        if seconds_left > 0:
            bucket.exhausted_until = self._clock() + seconds_left
            return
        now = self.wall()
        bucket.exhausted_until = self._clock() + max(0.0, window_end(bucket.scope[2], window, now) - now)

    def _retry_after(self, bucket: Bucket, units: float, now: float) -> float:
        kind = bucket.scope[2]
        if now < bucket.exhausted_until:
            return bucket.exhausted_until - now
        if bucket.refill_seconds > 0:
            return max(self.lease_interval, bucket.refill_seconds)
        if kind in BUDGETS or kind is Kind.REQUESTS_PER_MINUTE:
            return self.lease_interval
        # Tokens: how long the limit takes to refill what this request needs.
        return max(self.lease_interval, units * 60.0 / bucket.limit)

    def charge(
        self, tenant: TenantConfig, key_id: str, key_limits: LimitsConfig | None, cost_nanos: int
    ) -> None:
        """Count ``cost_nanos`` no request reserved (a mirrored shadow call's, known when it
        ends) against the tenant's and the key's budgets: taken from what they hold, below zero
        if need be; the leaser reports the debt to the ledger, and the budget refuses until it
        is covered."""
        if cost_nanos <= 0:
            return
        for key, limits in (("", tenant.limits), (key_id, key_limits if key_id else None)):
            if limits is None:
                continue
            for kind in BUDGETS:
                bucket = self.bucket(tenant, key, limits, kind)
                if bucket is not None:
                    bucket.holding -= cost_nanos
                    self.short()

    def settle(self, reservation: Reservation | None, tokens: int, cost_nanos: int) -> None:
        """Give back what the request did not use of its estimate (or take the extra)."""
        if reservation is None or reservation.settled:
            return
        reservation.settled = True
        for bucket in reservation.token_buckets:
            bucket.holding += reservation.tokens - tokens
        for bucket, lapsed in zip(reservation.budget_buckets, reservation.windows, strict=True):
            if bucket.lapsed == lapsed:
                bucket.holding += reservation.cost_nanos - cost_nanos
            else:
                # Reserved in a window that has ended: what it did not use was that window's
                # (the new one's ledger never granted it); what it used past it is a debt.
                bucket.holding -= max(0.0, cost_nanos - reservation.cost_nanos)
