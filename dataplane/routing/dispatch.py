"""Run a request against a route plan's candidates until one succeeds.

The ``Dispatcher`` lives as long as the node (not the snapshot), so what it
learns about deployments survives config changes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from dataplane.chat import StreamChunk
from dataplane.errors import AllCandidatesFailed, DeadlineExceeded, ProviderError
from dataplane.routing.router import Candidate, RoutePlan

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    candidate: Candidate
    outcome: str
    """"ok" or the error's kind."""
    error: str
    duration_ms: int


class DispatchFailed(Exception):
    """Wraps the caller-facing error with the attempts made."""

    def __init__(self, error: Exception, attempts: list[AttemptRecord]) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts


class Dispatcher:
    async def call(
        self,
        plan: RoutePlan,
        attempt: Callable[[Candidate, float], Awaitable[T]],
        *,
        deadline: float,
    ) -> tuple[T, Candidate, list[AttemptRecord]]:
        """Try candidates in order; ``deadline`` is ``time.monotonic()`` seconds.

        Raises ``DispatchFailed`` carrying the caller-facing error and the attempts.
        """
        attempts: list[AttemptRecord] = []
        last: ProviderError | None = None
        for candidate in plan.ordered:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            started = time.monotonic()
            try:
                result = await attempt(candidate, remaining)
            except ProviderError as exc:
                attempts.append(_record(candidate, exc.kind, exc.message, started))
                last = exc
                if not exc.retryable:
                    raise DispatchFailed(exc, attempts) from exc
                continue
            attempts.append(_record(candidate, "ok", "", started))
            return result, candidate, attempts
        if time.monotonic() >= deadline:
            error: Exception = DeadlineExceeded(f"deadline exceeded after {len(attempts)} attempt(s)")
        elif last is not None:
            error = AllCandidatesFailed(f"all {len(attempts)} attempt(s) failed; last: {last.message}")
        else:
            error = AllCandidatesFailed("no candidate to try")
        raise DispatchFailed(error, attempts) from last

    async def open_stream(
        self,
        plan: RoutePlan,
        start: Callable[[Candidate, float], AsyncIterator[StreamChunk]],
        *,
        deadline: float,
    ) -> tuple[StreamChunk, AsyncIterator[StreamChunk], Candidate, list[AttemptRecord]]:
        """Open a stream, falling back only until the first chunk has arrived."""

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

        (chunk, stream), candidate, attempts = await self.call(plan, first, deadline=deadline)
        return chunk, stream, candidate, attempts


def _record(candidate: Candidate, outcome: str, error: str, started: float) -> AttemptRecord:
    return AttemptRecord(candidate, outcome, error, int((time.monotonic() - started) * 1000))
