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
- an error whose kind is not in the policy's ``fallback_on`` ends the request.

Attempts in total never exceed the policy's ``max_attempts``. When time runs
out the caller gets DEADLINE_EXCEEDED with the attempts made.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dataplane.chat import StreamChunk
from dataplane.errors import (
    AllCandidatesFailed,
    DeadlineExceeded,
    DispatchFailed,
    ProviderError,
    UpstreamTimeout,
)
from dataplane.routing.candidate import Candidate
from dataplane.routing.health import (
    DEFAULT_BREAKER,
    FAILURE_KINDS,
    BreakerSettings,
    BreakerState,
    DeploymentHealth,
    DeploymentState,
)
from dataplane.routing.query import RoutePlan

T = TypeVar("T")

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    candidate: Candidate
    outcome: str
    """"ok" or the error's kind."""
    error: str
    duration_ms: int
    http_status: int | None = None
    retry_after_s: float | None = None
    """The upstream's Retry-After, when it sent one."""
    backoff_ms: int = 0
    """Time slept before this attempt."""


@dataclass(frozen=True, slots=True)
class ShadowOutcome(Generic[T]):
    """How a mirrored request went; given to the ``on_outcome`` callback of ``Dispatcher.shadow``."""

    candidate: Candidate
    outcome: str
    """"ok", an error kind, or "skipped" (breaker open, Retry-After, no time)."""
    error: str
    duration_ms: int
    result: T | None = None


class HealthBoard:
    """The read-only ``HealthView`` over a dispatcher's deployment states (``Dispatcher.health``)."""

    __slots__ = ("_states", "_troubled")

    def __init__(self, states: dict[str, DeploymentState], troubled: set[str]) -> None:
        self._states = states
        self._troubled = troubled

    def get(self, key: str) -> DeploymentHealth | None:
        state = self._states.get(key)
        return state.snapshot() if state is not None else None

    def all(self) -> dict[str, DeploymentHealth]:
        """Every deployment this node has called, for metrics and node status."""
        return {key: state.snapshot() for key, state in self._states.items()}

    def troubled(self) -> dict[str, DeploymentHealth]:
        if not self._troubled:
            return {}
        out = {}
        for key in list(self._troubled):
            health = self._states[key].snapshot()
            if health.state is BreakerState.OPEN or health.blocked_for_s > 0:
                out[key] = health
            elif health.state is BreakerState.CLOSED:
                # Recovered: nothing to re-check until it opens or is blocked again.
                self._troubled.discard(key)
        return out


class Dispatcher:
    """Retries, fallbacks, circuit breakers and passive health for one node."""

    def __init__(
        self,
        *,
        breaker: BreakerSettings = DEFAULT_BREAKER,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """``clock`` is the time base of every ``deadline``; ``sleep`` waits on it."""
        self._settings = breaker
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

    def state(self, candidate: Candidate) -> DeploymentState:
        """The breaker and averages of ``candidate``'s deployment (created on first use)."""
        key = candidate.key
        found = self._states.get(key)
        if found is None:
            found = self._states[key] = DeploymentState(self._settings, self._clock, key, self._troubled)
        return found

    async def call(
        self,
        plan: RoutePlan,
        attempt: Callable[[Candidate, float], Awaitable[T]],
        *,
        deadline: float,
        skipped: list[tuple[str, str]] | None = None,
    ) -> tuple[T, Candidate, list[AttemptRecord]]:
        """Try candidates in order; ``deadline`` is in the dispatcher's clock (``time.monotonic()``).

        ``attempt(candidate, remaining_s)`` must raise only ``ProviderError``s.
        Raises ``DispatchFailed`` carrying the caller-facing error and the attempts.
        Candidates passed over without an attempt (breaker open, Retry-After past
        the deadline, window too small) are appended to ``skipped`` when given,
        as (``alias@provider``, why), whether the call succeeds or not.
        """
        retry = plan.retry
        clock = self._clock
        attempts: list[AttemptRecord] = []
        if skipped is None:
            skipped = []
        last: ProviderError | None = None
        out_of_time = False
        too_small_window = 0  # after context_too_long: only larger windows may help

        pending = plan.ordered
        for n in range(retry.attempts_per_deployment):
            again: list[Candidate] = []  # failed with a retryable error: worth another pass
            for candidate in pending:
                if len(attempts) >= retry.max_attempts:
                    break
                window = candidate.model.context_window
                if too_small_window and window and window <= too_small_window:
                    skipped.append((candidate.label, f"context window {window} is not larger"))
                    continue
                state = self.state(candidate)
                wait = state.blocked_for()
                if wait > 0 and clock() + wait >= deadline:
                    skipped.append((candidate.label, f"Retry-After {wait:.1f} s outlasts the deadline"))
                    continue
                if not state.admits():
                    skipped.append((candidate.label, "circuit breaker open"))
                    continue
                if n:
                    ceiling = min(retry.backoff_cap_ms, retry.backoff_base_ms * (1 << (n - 1))) / 1000
                    wait = max(wait, self._rng.uniform(0, ceiling))
                if wait > 0:
                    if clock() + wait >= deadline:
                        out_of_time = True
                        break
                    await self._sleep(wait)
                remaining = deadline - clock()
                if remaining <= 0:
                    out_of_time = True
                    break
                # Taken just before the call, so a half-open probe slot is never
                # held across a backoff or leaked when time runs out.
                if not state.try_acquire():
                    skipped.append((candidate.label, "circuit breaker open"))
                    continue
                started = clock()
                try:
                    # The safety net for an attempt that ignores its timeout: the
                    # caller's deadline holds whatever the adapter does.
                    async with asyncio.timeout(remaining):
                        result = await attempt(candidate, remaining)
                except TimeoutError as exc:
                    error: ProviderError = UpstreamTimeout(
                        f"{candidate.label}: no answer within the {remaining:.3f} s left",
                        provider=candidate.provider.id,
                    )
                    error.__cause__ = exc
                except ProviderError as exc:
                    error = exc
                except BaseException:
                    state.release_probe()
                    raise
                else:
                    elapsed = clock() - started
                    state.record_success(elapsed * 1000)
                    attempts.append(
                        AttemptRecord(candidate, "ok", "", int(elapsed * 1000), backoff_ms=int(wait * 1000))
                    )
                    return result, candidate, attempts

                last = error
                attempts.append(
                    AttemptRecord(
                        candidate,
                        error.kind,
                        error.message,
                        int((clock() - started) * 1000),
                        error.http_status,
                        error.retry_after,
                        int(wait * 1000),
                    )
                )
                if error.kind in FAILURE_KINDS and not _cut_by_caller(error, deadline - clock()):
                    state.record_failure()
                else:
                    state.release_probe()
                if error.retry_after:
                    state.block_for(error.retry_after)
                if error.kind not in retry.fallback_on:
                    raise DispatchFailed(error, attempts, skipped) from error
                if error.kind == "context_too_long":
                    too_small_window = max(too_small_window, window or 1)
                if deadline - clock() <= 0:
                    out_of_time = True
                    break
                if error.retryable:
                    again.append(candidate)
            if out_of_time or len(attempts) >= retry.max_attempts or not again:
                break
            pending = tuple(again)

        raise DispatchFailed(
            self._final_error(attempts, skipped, last, out_of_time, deadline), attempts, skipped
        ) from last

    def _final_error(
        self,
        attempts: list[AttemptRecord],
        skipped: list[tuple[str, str]],
        last: ProviderError | None,
        out_of_time: bool,
        deadline: float,
    ) -> Exception:
        made = "; ".join(f"{a.candidate.label}: {a.outcome}" for a in attempts) or "none"
        if out_of_time or (attempts and self._clock() >= deadline):
            return DeadlineExceeded(f"deadline exceeded after {len(attempts)} attempt(s) [{made}]")
        if last is not None and not last.retryable and all(a.outcome == last.kind for a in attempts):
            # Every try said the same request-level thing (too long, filtered):
            # that error is more useful to the caller than "all failed".
            return last
        if last is not None:
            return AllCandidatesFailed(
                f"all {len(attempts)} attempt(s) failed [{made}]; last: {last.message}"
            )
        why = "; ".join(f"{label}: {reason}" for label, reason in skipped) or "the plan is empty"
        return AllCandidatesFailed(f"no candidate could be tried ({why})")

    async def open_stream(
        self,
        plan: RoutePlan,
        start: Callable[[Candidate, float], AsyncIterator[StreamChunk]],
        *,
        deadline: float,
        skipped: list[tuple[str, str]] | None = None,
    ) -> tuple[StreamChunk, AsyncIterator[StreamChunk], Candidate, list[AttemptRecord]]:
        """Open a stream, falling back only until the first chunk has arrived.

        Once a chunk is out, a failure belongs to the caller: the rest of the
        stream comes from the candidate that produced the first chunk.
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

        (chunk, stream), candidate, attempts = await self.call(
            plan, first, deadline=deadline, skipped=skipped
        )
        return chunk, stream, candidate, attempts

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
        task = asyncio.get_running_loop().create_task(self._shadow(candidate, attempt, deadline, on_outcome))
        # Strong reference until done: the loop keeps only weak ones.
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)
        return task

    async def _shadow(
        self,
        candidate: Candidate,
        attempt: Callable[[Candidate, float], Awaitable[T]],
        deadline: float,
        on_outcome: Callable[[ShadowOutcome[T]], object],
    ) -> None:
        clock = self._clock
        state = self.state(candidate)
        remaining = deadline - clock()
        outcome: ShadowOutcome[T]
        if remaining <= 0:
            outcome = ShadowOutcome(candidate, "skipped", "no time left", 0)
        elif state.blocked_for() > 0:
            outcome = ShadowOutcome(candidate, "skipped", "Retry-After in force", 0)
        elif not state.try_acquire():
            outcome = ShadowOutcome(candidate, "skipped", "circuit breaker open", 0)
        else:
            started = clock()
            try:
                async with asyncio.timeout(remaining):
                    result = await attempt(candidate, remaining)
            except TimeoutError:
                state.release_probe()  # the caller's time ran out, not the deployment's
                outcome = ShadowOutcome(
                    candidate, "timeout", "no answer in time", int((clock() - started) * 1000)
                )
            except ProviderError as exc:
                if exc.kind in FAILURE_KINDS:
                    state.record_failure()
                else:
                    state.release_probe()
                if exc.retry_after:
                    state.block_for(exc.retry_after)
                outcome = ShadowOutcome(candidate, exc.kind, exc.message, int((clock() - started) * 1000))
            except BaseException:
                state.release_probe()
                raise
            else:
                elapsed = clock() - started
                state.record_success(elapsed * 1000)
                outcome = ShadowOutcome(candidate, "ok", "", int(elapsed * 1000), result)
        try:
            on_outcome(outcome)
        except Exception:
            # Nobody awaits this task: a failing recorder must not surface as an
            # unretrieved task exception, and must not touch the served request.
            _log.exception("shadow outcome callback failed for %s", candidate.label)

    async def drain_shadows(self) -> None:
        """Wait for every shadow call in flight (tests, graceful shutdown)."""
        while self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel shadow calls in flight; the dispatcher can still be used afterwards."""
        for task in list(self._shadows):
            task.cancel()
        await asyncio.gather(*self._shadows, return_exceptions=True)


def _cut_by_caller(error: ProviderError, left_s: float) -> bool:
    """A timeout that ended with the caller's deadline says nothing about the
    deployment (the caller allowed less than it needs); it must not open breakers."""
    return error.kind == "timeout" and left_s <= _DEADLINE_SLACK_S


_DEADLINE_SLACK_S = 0.02
