"""Keeps the node's buckets (``dataplane.quota.buckets``) filled from the control plane.

Once per lease period (and at once when a request finds a bucket short, at most four times
a period) one ``QuotaService.Lease`` call carries every bucket that needs something: what it
wants (its observed demand for two lease periods, at least its largest request, less what
it holds: so a busy node asks for more and a quiet one for little) and what it hands back
(what it holds beyond twice that). Budgets are asked every round while held or used, so a
window the control plane reports exhausted stops every node within one period. A bucket
unused for ``IDLE_ROUNDS`` periods hands back what it holds and is forgotten, except a budget
reported exhausted: it is kept, refusing, until its window ends (``Quotas.exhaust``), and the
ledgers never reopen a used-up window for what is handed back (``signalbox.quota_grants``).

A bucket never leased admits one request on credit (its holding goes below zero) and kicks a
round; the first lease then takes the debt from the control plane: a node's first request is
not refused for want of a lease, and it is still counted. As exhausted budgets are never
forgotten within their window, their credit cannot outlive the ledger's word: a budget goes
past its limit by at most one worst-case request per worker per window (and per start). When a call fails the buckets
keep what they hold and ``Quotas.reachable`` turns False: each tenant's ``on_unreachable``
applies until a call succeeds again.

The node's stop lets the leaser serve its drain, then ``close`` ends it with a last round that
reports every debt and hands back everything held: what the ledger counts of a stopped worker
is what it spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

import grpc

from dataplane.quota.buckets import BUDGETS, Bucket, Quotas
from signalbox.api.config.v1 import quota_pb2, quota_pb2_grpc
from signalbox.tls import ClientTls, aio_channel

log = logging.getLogger("signalbox.dataplane.quota")

DEFAULT_LEASE_INTERVAL = 1.0
MAX_ASKS = 4096
"""Asks per call (the control plane's bound)."""
IDLE_ROUNDS = 60
"""Rounds without a request after which a bucket hands back what it holds and is dropped."""
DEMAND_SMOOTHING = 0.5
"""Weight of the newest period in the demand estimate."""


class _State:
    __slots__ = ("demand", "idle", "overspent", "returned")

    def __init__(self) -> None:
        self.demand = 0.0
        self.idle = 0
        self.returned = 0
        self.overspent = 0


class QuotaLeaser:
    """The background loop of one node: ``run`` until cancelled."""

    def __init__(
        self,
        quotas: Quotas,
        target: str,
        tls: ClientTls,
        *,
        interval: float = DEFAULT_LEASE_INTERVAL,
        holder: str = "",
    ) -> None:
        self.quotas = quotas
        self.holder = holder
        """This worker, ``<node id>/<i>``: the ledger's fair share counts each worker on its own."""
        self._target = target
        self._tls = tls
        self.interval = interval
        self._wake = asyncio.Event()
        self._states: dict[Bucket, _State] = {}
        self._last = time.monotonic()
        self.rounds = 0
        """Lease calls that succeeded."""
        self._closing = False
        quotas.short = self._wake.set

    async def run(self) -> None:
        """Lease until cancelled, or until ``close``: then the last round, and return."""
        channel: grpc.aio.Channel | None = None
        try:
            while True:
                # Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation that
                # arrives as the event is set (requests kick it often, also while the node
                # drains), and the node's stop would then wait for this loop forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await self._wake.wait()
                self._wake.clear()
                last = self._closing
                if channel is None:
                    channel = aio_channel(self._target, self._tls)
                try:
                    await self.round(quota_pb2_grpc.QuotaServiceStub(channel), last=last)
                except Exception as exc:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # a call cut short by the node's stop: not a failure to lease
                    if not isinstance(exc, grpc.aio.AioRpcError | OSError):
                        log.exception("quota lease failed unexpectedly")
                    elif last:
                        log.warning(
                            "quota: the stop's last lease failed: %s; what this worker spent past "
                            "what it held is in its evidence only",
                            _reason(exc),
                        )
                    elif self.quotas.reachable:
                        log.warning("quota lease failed: %s; tenants' on_unreachable applies", _reason(exc))
                    self.quotas.reachable = False
                    # A new channel next time: the node certificate may have been renewed.
                    await channel.close(None)
                    channel = None
                self.quotas.renewed()
                if last:
                    return
                if not self._closing:
                    # Kicked rounds are spaced a quarter period apart at least.
                    await asyncio.sleep(self.interval / 4)
        finally:
            if channel is not None:
                await channel.close(None)

    @property
    def call_timeout(self) -> float:
        """Seconds a lease call may take."""
        return max(2.0, 2 * self.interval)

    def close(self) -> None:
        """The node stops, its requests drained and settled: ``run`` ends after one last
        round (the one under way, if any, first: a round cut short may have reached the
        ledger, and what it handed back would be handed back twice). In it each bucket
        reports its debt (what was spent past what it held: a mirror's charge, a request on
        credit) and hands back what it holds, nothing wanted, so the ledger counts what was
        spent, no more and no less. A last round that fails is logged: what was held then
        counts as spent (the safe side), the debt in the evidence only."""
        self._closing = True
        self._wake.set()

    async def round(self, stub: quota_pb2_grpc.QuotaServiceAsyncStub, *, last: bool = False) -> None:
        """One lease call for every bucket that needs one (several calls past ``MAX_ASKS``);
        ``last``: the stop's (``close``)."""
        now = time.monotonic()
        # Demand over a period at least: a kicked round right after another must not read one
        # request as a torrent (and lease the whole budget for it). Grants per second over the
        # real spacing of rounds (at least the kicked rounds' quarter period).
        elapsed = max(now - self._last, self.interval)
        spacing = max(now - self._last, self.interval / 4)
        asks: list[tuple[Bucket, quota_pb2.QuotaAsk]] = []
        for bucket in list(self.quotas.buckets.values()):
            ask = self._last_ask(bucket) if last else self._ask(bucket, elapsed, self.quotas.now())
            if ask is not None:
                asks.append((bucket, ask))
        # The last round says so in a call even with nothing to ask, if ever this worker
        # leased: an air-gapped node's ledger waits for it.
        calls = len(asks) or (1 if last and self.rounds else 0)
        try:
            for start in range(0, calls, MAX_ASKS):
                chunk = asks[start : start + MAX_ASKS]
                response = await stub.Lease(
                    quota_pb2.LeaseRequest(
                        asks=[a for _, a in chunk],
                        holder=self.holder,
                        last=last and start + MAX_ASKS >= calls,
                    ),
                    timeout=self.call_timeout,
                )
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "leased %s",
                        [
                            (a.want, a.returned, g.granted, g.limit)
                            for (_, a), g in zip(chunk, response.grants, strict=False)
                        ],
                    )
                for (bucket, _), grant in zip(chunk, response.grants, strict=False):
                    self._granted(bucket, grant, spacing)
                    state = self._states.get(bucket)
                    if state is not None:
                        state.returned = state.overspent = 0
        except BaseException:
            # What was handed back did not arrive: it is still ours.
            for bucket, _ in asks:
                state = self._states.get(bucket)
                if state is not None:
                    bucket.holding += state.returned - state.overspent
                    state.returned = state.overspent = 0
            raise
        self._last = now
        if asks:
            # Only a call that went through says the control plane is back: a round with
            # nothing to ask proves nothing (and must not end fail_closed on its own).
            self.quotas.reachable = True
            self.rounds += 1

    def _ask(self, bucket: Bucket, elapsed: float, now: float) -> quota_pb2.QuotaAsk | None:
        state = self._states.get(bucket)
        if state is None:
            state = self._states[bucket] = _State()
        rate = bucket.asked / elapsed
        state.demand = (
            rate if not bucket.leased else (1 - DEMAND_SMOOTHING) * state.demand + DEMAND_SMOOTHING * rate
        )
        state.idle = state.idle + 1 if not bucket.asked else 0
        bucket.asked = 0.0
        largest, bucket.largest = bucket.largest, 0.0
        target = max(state.demand * 2 * self.interval, largest)
        budget = bucket.scope[2] in BUDGETS
        overspent = 0
        if bucket.leased and bucket.holding < 0 and (budget or bucket.holding <= -1):
            # Requests used more than their estimates: the control plane counts it now and the
            # bucket starts from zero (the debt is the ledger's, and is not asked for again).
            overspent = math.ceil(-bucket.holding)
            bucket.holding += overspent
        returned = 0
        # A budget exhausted for its window is kept however idle it is: a new bucket would
        # know nothing of it, and would admit on credit.
        if state.idle >= IDLE_ROUNDS and not (budget and bucket.exhausted_until > now):
            returned = max(0, math.floor(bucket.holding))
            del self.quotas.buckets[bucket.scope]
            del self._states[bucket]
            if not (returned or overspent):
                return None
            want = 0
        else:
            if budget and bucket.exhausted:
                returned = max(0, math.floor(bucket.holding))
            elif bucket.holding > 2 * target + 1:
                returned = math.floor(bucket.holding - 2 * target)
            want = 0 if returned else max(0, math.ceil(target - bucket.holding))
            if not bucket.leased:
                want = max(want, 1)
            elif not (want or returned or overspent or (budget and (bucket.holding > 0 or largest))):
                return None
        bucket.holding -= returned
        state.returned, state.overspent = returned, overspent
        return _ask_of(bucket, want, returned, overspent, state.demand)

    def _last_ask(self, bucket: Bucket) -> quota_pb2.QuotaAsk | None:
        """The last round's ask (``close``): the debt as overspent (a bucket never leased:
        asked for, as its first lease would), what is held handed back, nothing wanted."""
        state = self._states.get(bucket)
        if state is None:
            state = self._states[bucket] = _State()
        debt = math.ceil(-bucket.holding) if bucket.holding < 0 else 0
        overspent = debt if bucket.leased else 0
        returned = max(0, math.floor(bucket.holding))
        if not (debt or returned):
            return None
        bucket.holding += overspent - returned
        state.returned, state.overspent = returned, overspent
        return _ask_of(bucket, 0 if bucket.leased else debt, returned, overspent, state.demand)

    def _granted(self, bucket: Bucket, grant: quota_pb2.QuotaGrant, spacing: float) -> None:
        bucket.holding += grant.granted
        rate = grant.granted / spacing
        bucket.granted_rate = rate if not bucket.leased else 0.5 * bucket.granted_rate + 0.5 * rate
        bucket.leased = True
        bucket.exhausted = grant.exhausted
        if bucket.scope[2] in BUDGETS:
            if grant.window_seconds_left > 0:
                bucket.window_ends = self.quotas.now() + grant.window_seconds_left
            if grant.exhausted:
                self.quotas.exhaust(bucket, grant.window, grant.window_seconds_left)
            else:
                bucket.exhausted_until = 0.0  # a raised limit, or a new window
        bucket.refill_seconds = grant.refill_seconds
        bucket.window = grant.window
        bucket.refilled_at = 0.0
        if not grant.limit and bucket.scope in self.quotas.buckets:
            # The control plane has no such limit (any more): the next snapshot drops it too.
            del self.quotas.buckets[bucket.scope]
            self._states.pop(bucket, None)


def _ask_of(bucket: Bucket, want: int, returned: int, overspent: int, demand: float) -> quota_pb2.QuotaAsk:
    tenant_id, key_id, kind = bucket.scope
    return quota_pb2.QuotaAsk(
        scope=quota_pb2.QuotaScope(tenant_id=tenant_id, api_key_id=key_id, kind=int(kind)),  # type: ignore[arg-type]
        want=want,
        returned=returned,
        returned_window=bucket.window if kind in BUDGETS else "",
        demand_per_second=demand,
        overspent=overspent,
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
