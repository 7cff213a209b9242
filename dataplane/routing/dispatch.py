"""Run a request against a route plan's candidates until one succeeds.

The ``Dispatcher`` lives as long as the node (not the snapshot), so what it
learns about deployments (breakers, latency, error rate, Retry-After) survives
config changes. It is used from one event loop; the clock, the sleep and the
random source are injected so tests control time and jitter.

Failing over comes before retrying: the plan's candidates are tried once each,
in order; then those that failed with a ``retryable`` error get another pass,
up to ``attempts_per_deployment`` passes, each attempt of a later pass after
an exponential backoff with full jitter (and at least the deployment's
Retry-After). Throughout:

- a candidate is skipped while its breaker is open, while a Retry-After that
  outlasts the caller's deadline runs, or after a context-too-long error when
  its window is no larger than the one that was too small;
- no sleep ever ends past the deadline: when the next one would, the request
  ends with DEADLINE_EXCEEDED and the attempts made;
- an error whose kind is not in the policy's ``fallback_on`` ends the request;
- a Retry-After is honoured for at most the node's ``max_retry_after_s``;
- a timeout counts against the deployment (breaker, error rate, and its elapsed
  time as a lower bound on its latency) even when the caller's deadline cut it:
  a deployment slower than its callers' deadlines is routed around. That holds
  when the cut comes as a cancellation from outside (gRPC cancels the handler of a
  call whose deadline passed, which can come before the attempt's own timer); a
  caller that goes away before its deadline says nothing about the deployment.

Hedging (a policy's ``retry.hedge``, unary calls only): when an attempt has not
answered ``after_ms`` after it started, the next candidate of the first pass
that can start at once is started beside it, up to ``max_extra`` times; the
first success wins and every attempt still running is cancelled (its upstream
HTTP call closed) and recorded with the outcome "hedged". A failure while
another attempt runs starts nothing; once none runs, failing over continues as
without hedging. Streams are never hedged: two streams racing to a first chunk
would double the upstream's work for every slow start, and a stream's fallback
already ends with its first chunk.

Attempts in total (hedges included) never exceed the policy's ``max_attempts``.
When time runs out the caller gets DEADLINE_EXCEEDED with the attempts made.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import replace
from typing import TypeVar

from dataplane.chat import StreamChunk
from dataplane.config.model import RetrySettings
from dataplane.errors import (
    DispatchFailed,
    ProviderError,
)
from dataplane.routing.attempts import (
    CANCELLED,
    HEDGED,
    AttemptRecord,
    Cursor,
    Flight,
    Launch,
    bounded,
    final_error,
    timed_out,
)
from dataplane.routing.candidate import Candidate
from dataplane.routing.health import (
    DEFAULT_BREAKER,
    DEFAULT_MAX_RETRY_AFTER_S,
    FAILURE_KINDS,
    BreakerSettings,
    DeploymentState,
    HealthBoard,
)
from dataplane.routing.query import RoutePlan
from dataplane.routing.shadow import ShadowOutcome, mirror

__all__ = ["AttemptRecord", "DispatchFailed", "Dispatcher", "HealthBoard", "ShadowOutcome"]

T = TypeVar("T")

DEADLINE_RACE_S = 0.01
"""A cancellation this close to the caller's deadline is the deadline's (``Dispatcher._cut``)."""


class Dispatcher:
    """Retries, fallbacks, hedging, circuit breakers and passive health for one node."""

    def __init__(
        self,
        *,
        breaker: BreakerSettings = DEFAULT_BREAKER,
        max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """``clock`` is the time base of every ``deadline``; ``sleep`` waits on it.
        ``max_retry_after_s`` caps every upstream Retry-After (the node's setting)."""
        if not (max_retry_after_s > 0 and math.isfinite(max_retry_after_s)):
            raise ValueError(
                f"max_retry_after_s must be a positive number of seconds, not {max_retry_after_s}"
            )
        self._settings = breaker
        self._max_retry_after_s = max_retry_after_s
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._states: dict[str, DeploymentState] = {}
        self._troubled: set[str] = set()
        self._health = HealthBoard(self._states, self._troubled)
        self._shadows: set[asyncio.Task[None]] = set()

    @property
    def health(self) -> HealthBoard:
        """Per-deployment health for ``plan_route(..., health=dispatcher.health)``."""
        return self._health

    @property
    def max_retry_after_s(self) -> float:
        return self._max_retry_after_s

    def state(self, candidate: Candidate) -> DeploymentState:
        """The breaker and averages of ``candidate``'s deployment (created on first use)."""
        key = candidate.key
        found = self._states.get(key)
        if found is None:
            found = self._states[key] = DeploymentState(
                self._settings, self._clock, key, self._troubled, self._max_retry_after_s
            )
        return found

    def retain(self, keys: Collection[str]) -> None:
        """Forget every deployment whose key is not in ``keys`` (a new snapshot's): what was
        learnt of a deployment the snapshot removed would otherwise stay for the node's life,
        one breaker (and breaker series) per deployment ever configured. A request still
        running on the old snapshot that calls it again starts it afresh."""
        for key in [key for key in self._states if key not in keys]:
            self._states.pop(key).detach()
            self._troubled.discard(key)

    async def call(
        self,
        plan: RoutePlan,
        attempt: Callable[[Candidate, float], Awaitable[T]],
        *,
        deadline: float,
        skipped: list[tuple[str, str]] | None = None,
        hedge: bool = True,
        keeps_deadline: bool = False,
        attempts: list[AttemptRecord] | None = None,
    ) -> tuple[T, Candidate, list[AttemptRecord]]:
        """Try candidates in order; ``deadline`` is in the dispatcher's clock (``time.monotonic()``).

        ``attempt(candidate, remaining_s)`` must raise only ``ProviderError``s.
        Raises ``DispatchFailed`` carrying the caller-facing error and the attempts.
        Candidates passed over without an attempt (breaker open, Retry-After past
        the deadline, window too small) are appended to ``skipped`` when given,
        as (``alias@provider``, why), whether the call succeeds or not.
        With ``hedge`` (the default) the plan's ``retry.hedge`` applies; its timer
        runs on the event loop's clock. ``keeps_deadline``: ``attempt`` itself ends by
        ``remaining_s`` (a provider adapter: its upstream client bounds every wait by the
        attempt's deadline), so the dispatcher adds no timer of its own to each attempt.
        ``attempts``: the list the attempts are appended to as they end (a new one when not
        given), so a caller cancelled meanwhile still knows them: an attempt in flight when
        the call is cancelled is appended as ``cancelled`` (without hedging).
        """
        if skipped is None:
            skipped = []
        if hedge and plan.retry.hedge_max_extra > 0:
            return await self._call_hedged(plan, attempt, deadline, skipped, attempts)
        retry = plan.retry
        clock = self._clock
        if attempts is None:
            attempts = []
        last: ProviderError | None = None
        error: ProviderError | None = None
        cur = Cursor(plan.ordered)
        launch = self._first(cur, retry, deadline)
        if launch is None:
            launch = await self._next(cur, retry, len(attempts), deadline, skipped)
        try:
            while launch is not None:
                started = clock()
                try:
                    if keeps_deadline:
                        result = await attempt(launch.candidate, launch.remaining)
                    else:
                        result = await bounded(attempt, launch)
                except TimeoutError as exc:
                    error = timed_out(launch, exc)
                except ProviderError as exc:
                    error = exc
                except asyncio.CancelledError:
                    self._cut(launch.state, started, deadline)
                    attempts.append(
                        AttemptRecord(
                            launch.candidate,
                            CANCELLED,
                            "the request was cancelled while the upstream had it",
                            int((clock() - started) * 1000),
                            backoff_ms=int(launch.wait * 1000),
                        )
                    )
                    raise
                except BaseException:
                    launch.state.release_probe()
                    raise
                else:
                    elapsed = clock() - started
                    launch.state.record_success(elapsed * 1000)
                    attempts.append(
                        AttemptRecord(
                            launch.candidate,
                            "ok",
                            "",
                            int(elapsed * 1000),
                            backoff_ms=int(launch.wait * 1000),
                        )
                    )
                    return result, launch.candidate, attempts
                last = error
                attempts.append(self._failed(cur, launch, error, started))
                if error.kind not in retry.fallback_on:
                    raise DispatchFailed(error, attempts, skipped) from error
                if deadline - clock() <= 0:
                    cur.out_of_time = True
                    break
                launch = await self._next(cur, retry, len(attempts), deadline, skipped)
            raise DispatchFailed(
                final_error(attempts, skipped, last, cur.out_of_time, self._clock() >= deadline),
                attempts,
                skipped,
            ) from last
        finally:
            # A failed attempt's error was caught in this frame, so its traceback holds the
            # frame, whose locals hold the error: a reference cycle that would keep the
            # request's objects until the cyclic collector runs (seldom in a serving worker).
            error = last = None

    def _first(self, cur: Cursor, retry: RetrySettings, deadline: float) -> Launch | None:
        """The plan's first candidate, cleared without ``_next``'s checks when none can
        refuse it: no deployment of this dispatcher has an open (or half-open) breaker or a
        Retry-After running (``_troubled`` is empty: each state reports itself there when it
        opens or is blocked), so the first candidate is closed and unblocked, needs no probe
        slot and no backoff (the usual request). None: ask ``_next``."""
        if self._troubled or not cur.pending or retry.max_attempts < 1:
            return None
        remaining = deadline - self._clock()
        if remaining <= 0:
            return None
        candidate = cur.pending[0]
        cur.index = 1
        return Launch(candidate, self.state(candidate), 0.0, remaining)

    async def _next(
        self,
        cur: Cursor,
        retry: RetrySettings,
        made: int,
        deadline: float,
        skipped: list[tuple[str, str]],
        *,
        may_wait: bool = True,
    ) -> Launch | None:
        """The next candidate to try, after any backoff or Retry-After it needs; None when
        there is none (``cur.out_of_time`` says whether time ran out). Without ``may_wait``
        (a hedge) only a candidate of the first pass that can start at once is taken."""
        clock = self._clock
        while made < retry.max_attempts:
            if cur.index >= len(cur.pending):
                if not may_wait or not cur.again or cur.passes + 1 >= retry.attempts_per_deployment:
                    return None
                cur.pending, cur.again, cur.index = tuple(cur.again), [], 0
                cur.passes += 1
                continue
            if not may_wait and cur.passes:
                return None
            candidate = cur.pending[cur.index]
            window = candidate.model.context_window
            if cur.too_small_window and window and window <= cur.too_small_window:
                cur.index += 1
                skipped.append((candidate.label, f"context window {window} is not larger"))
                continue
            state = self.state(candidate)
            wait = state.blocked_for()
            if wait > 0 and clock() + wait >= deadline:
                cur.index += 1
                skipped.append((candidate.label, f"Retry-After {wait:.1f} s outlasts the deadline"))
                continue
            if not state.admits():
                cur.index += 1
                skipped.append((candidate.label, "circuit breaker open"))
                continue
            if cur.passes:
                ceiling = min(retry.backoff_cap_ms, retry.backoff_base_ms * (1 << (cur.passes - 1))) / 1000
                wait = max(wait, self._rng.uniform(0, ceiling))
            if wait > 0:
                if not may_wait:
                    return None
                if clock() + wait >= deadline:
                    cur.out_of_time = True
                    return None
                await self._sleep(wait)
            remaining = deadline - clock()
            if remaining <= 0:
                cur.out_of_time = True
                return None
            cur.index += 1
            # Taken just before the call, so a half-open probe slot is never
            # held across a backoff or leaked when time runs out.
            if not state.try_acquire():
                skipped.append((candidate.label, "circuit breaker open"))
                continue
            return Launch(candidate, state, wait, remaining)
        return None

    def _failed(
        self, cur: Cursor, launch: Launch, error: ProviderError, started: float, hedge: bool = False
    ) -> AttemptRecord:
        """What a failed attempt teaches the deployment's health and the request's cursor."""
        elapsed = self._clock() - started
        candidate, state = launch.candidate, launch.state
        if error.kind in FAILURE_KINDS:
            # A timeout also says: at least this slow (whoever's deadline ended it).
            state.record_failure(elapsed * 1000 if error.kind == "timeout" else None)
        else:
            state.release_probe()
        if error.retry_after:
            state.block_for(error.retry_after)
        if error.kind == "context_too_long":
            cur.too_small_window = max(cur.too_small_window, candidate.model.context_window or 1)
        if error.retryable:
            cur.again.append(candidate)
        return AttemptRecord(
            candidate,
            error.kind,
            error.message,
            int(elapsed * 1000),
            error.http_status,
            error.retry_after,
            int(launch.wait * 1000),
            hedge,
        )

    async def _call_hedged(
        self,
        plan: RoutePlan,
        attempt: Callable[[Candidate, float], Awaitable[T]],
        deadline: float,
        skipped: list[tuple[str, str]],
        cancelled_into: list[AttemptRecord] | None = None,
    ) -> tuple[T, Candidate, list[AttemptRecord]]:
        """``call`` with the plan's hedge: attempts run as tasks, more than one at a time.
        ``cancelled_into``: when the call itself is cancelled, its attempts go there, those in
        flight as ``cancelled`` (as ``call``'s ``attempts``)."""
        retry = plan.retry
        clock = self._clock
        loop = asyncio.get_running_loop()
        after = retry.hedge_after_ms / 1000
        cur = Cursor(plan.ordered)
        flights: dict[asyncio.Task[T], Flight] = {}
        records: list[tuple[int, AttemptRecord]] = []
        launched = hedges = 0
        last_start = 0.0
        last: ProviderError | None = None

        def start(launch: Launch, hedge: bool) -> None:
            nonlocal launched, last_start
            task = loop.create_task(bounded(attempt, launch))
            flights[task] = Flight(launched, launch, clock(), hedge)
            launched += 1
            last_start = loop.time()

        def attempts() -> list[AttemptRecord]:
            return [record for _, record in sorted(records, key=lambda r: r[0])]

        try:
            launch = await self._next(cur, retry, launched, deadline, skipped)
            if launch is not None:
                start(launch, False)
            while flights:
                timer = None
                if hedges < retry.hedge_max_extra and launched < retry.max_attempts:
                    timer = max(0.0, last_start + after - loop.time())
                done, _ = await asyncio.wait(flights, timeout=timer, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    launch = await self._next(cur, retry, launched, deadline, skipped, may_wait=False)
                    if launch is None:
                        hedges = retry.hedge_max_extra  # nothing can start at once: stop hedging
                    else:
                        hedges += 1
                        start(launch, True)
                    continue
                winner: tuple[T, Flight] | None = None
                fatal: ProviderError | None = None
                for task in sorted(done, key=lambda t: flights[t].seq):
                    flight = flights.pop(task)
                    candidate, state = flight.launch.candidate, flight.launch.state
                    ms = int((clock() - flight.started) * 1000)
                    exc = asyncio.CancelledError() if task.cancelled() else task.exception()
                    if exc is None:
                        state.record_success((clock() - flight.started) * 1000)
                        if winner is None:
                            winner = (task.result(), flight)
                            record = AttemptRecord(
                                candidate, "ok", "", ms, backoff_ms=int(flight.launch.wait * 1000)
                            )
                        else:
                            record = AttemptRecord(candidate, HEDGED, "another attempt answered first", ms)
                        records.append((flight.seq, replace(record, hedge=flight.hedge)))
                        continue
                    if isinstance(exc, TimeoutError):
                        error = timed_out(flight.launch, exc)
                    elif isinstance(exc, ProviderError):
                        error = exc
                    else:
                        state.release_probe()
                        # An attempt that broke its contract: a bug, passed on as it is. Its
                        # traceback takes in this frame, whose locals reach it (``exc``, and its
                        # task through ``task`` and ``done``): let go of them as it leaves, or the
                        # request would wait for the cyclic collector (``dataplane.collector``).
                        try:
                            raise exc
                        finally:
                            del exc, task, done
                    last = error
                    records.append(
                        (flight.seq, self._failed(cur, flight.launch, error, flight.started, flight.hedge))
                    )
                    if fatal is None and error.kind not in retry.fallback_on:
                        fatal = error
                if winner is not None:
                    result, flight = winner
                    await self._cancel(
                        flights, records, HEDGED, f"{flight.launch.candidate.label} answered first"
                    )
                    return result, flight.launch.candidate, attempts()
                if fatal is not None:
                    await self._cancel(flights, records, "cancelled", f"another attempt failed: {fatal.kind}")
                    raise DispatchFailed(fatal, attempts(), skipped) from fatal
                if deadline - clock() <= 0:
                    cur.out_of_time = True  # what still runs ends at the deadline by itself
                elif not flights:
                    launch = await self._next(cur, retry, launched, deadline, skipped)
                    if launch is not None:
                        start(launch, False)
        finally:
            # The caller went away, or an attempt broke its contract: leave nothing running.
            for task in flights:
                task.cancel()
            if flights:
                await asyncio.gather(*flights, return_exceptions=True)
                for flight in flights.values():
                    self._cut(flight.launch.state, flight.started, deadline)
                    ms = int((clock() - flight.started) * 1000)
                    why = "the request was cancelled while the upstream had it"
                    records.append((flight.seq, AttemptRecord(flight.launch.candidate, CANCELLED, why, ms)))
                if cancelled_into is not None:
                    cancelled_into[:] = attempts()
        made = attempts()
        raise DispatchFailed(
            final_error(made, skipped, last, cur.out_of_time, self._clock() >= deadline), made, skipped
        ) from last

    def _cut(self, state: DeploymentState, started: float, deadline: float) -> None:
        """An attempt cancelled from outside: at the caller's deadline, the timeout it is
        (whoever noticed the deadline first); before it, no verdict on the deployment."""
        now = self._clock()
        if now >= deadline - DEADLINE_RACE_S:
            state.record_failure((now - started) * 1000)
        else:
            state.release_probe()

    async def _cancel(
        self,
        flights: dict[asyncio.Task[T], Flight],
        records: list[tuple[int, AttemptRecord]],
        outcome: str,
        why: str,
    ) -> None:
        """Cancel the attempts still running (closing their upstream calls) and record them."""
        for task in flights:
            task.cancel()
        await asyncio.gather(*flights, return_exceptions=True)
        for flight in flights.values():
            elapsed_ms = (self._clock() - flight.started) * 1000
            state = flight.launch.state
            state.release_probe()
            if outcome == HEDGED:
                state.observe_at_least(elapsed_ms)  # slower than the winner, at least this slow
            records.append(
                (
                    flight.seq,
                    AttemptRecord(
                        flight.launch.candidate,
                        outcome,
                        f"cancelled: {why}",
                        int(elapsed_ms),
                        backoff_ms=int(flight.launch.wait * 1000),
                        hedge=flight.hedge,
                    ),
                )
            )
        flights.clear()

    async def open_stream(
        self,
        plan: RoutePlan,
        start: Callable[[Candidate, float], AsyncIterator[StreamChunk]],
        *,
        deadline: float,
        skipped: list[tuple[str, str]] | None = None,
        attempts: list[AttemptRecord] | None = None,
    ) -> tuple[StreamChunk, AsyncIterator[StreamChunk], Candidate, list[AttemptRecord]]:
        """Open a stream, falling back only until the first chunk has arrived.

        Once a chunk is out, a failure belongs to the caller: the rest of the
        stream comes from the candidate that produced the first chunk. ``attempts``: as
        ``call``'s.
        """

        async def first(
            candidate: Candidate, remaining: float
        ) -> tuple[StreamChunk, AsyncIterator[StreamChunk]]:
            stream = start(candidate, remaining)
            try:
                chunk = await anext(stream)
            except StopAsyncIteration:
                chunk = StreamChunk()
            except BaseException:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
                raise
            return chunk, stream

        # Never hedged (see the module's docstring).
        (chunk, stream), candidate, made = await self.call(
            plan, first, deadline=deadline, skipped=skipped, hedge=False, attempts=attempts
        )
        return chunk, stream, candidate, made

    def shadow(
        self,
        plan: RoutePlan,
        attempt: Callable[[Candidate, float], Awaitable[T]],
        *,
        deadline: float,
        on_outcome: Callable[[ShadowOutcome[T]], object],
    ) -> asyncio.Task[None] | None:
        """Mirror the request to ``plan.shadow``, fire-and-forget; ``None`` when the plan has none.

        The caller's response never waits for it or depends on it; ``on_outcome``
        receives how it went (for evidence). One try, no fallback; the breaker
        and health of the shadow deployment learn from it like from any call.
        """
        candidate = plan.shadow
        if candidate is None:
            return None
        task = asyncio.get_running_loop().create_task(
            mirror(candidate, self.state(candidate), attempt, deadline, on_outcome, self._clock)
        )
        # Strong reference until done: the loop keeps only weak ones.
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)
        return task

    async def drain_shadows(self) -> None:
        """Wait for every shadow call in flight (tests, graceful shutdown)."""
        while self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel shadow calls in flight; the dispatcher can still be used afterwards."""
        for task in list(self._shadows):
            task.cancel()
        await asyncio.gather(*self._shadows, return_exceptions=True)
