"""What one request's dispatch keeps track of: its attempts, where it is in its plan, and
the error it ends with when nothing served it (``final_error``).

Shared by the dispatcher's sequential and hedged paths (``dispatch.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from dataplane.errors import AllCandidatesFailed, DeadlineExceeded, ProviderError, UpstreamTimeout
from dataplane.routing.candidate import Candidate
from dataplane.routing.health import DeploymentState

T = TypeVar("T")

HEDGED = "hedged"
"""Outcome of an attempt cancelled because another attempt of the same request answered first."""
CANCELLED = "cancelled"
"""Outcome of an attempt in flight when its request was cancelled (the caller went away)."""


@dataclass(slots=True)  # not frozen: made per attempt (see dataplane.pipeline.call)
class AttemptRecord:
    candidate: Candidate
    outcome: str
    """"ok", the error's kind, "hedged" (cancelled: another attempt answered first) or
    "cancelled" (in flight when the request was cancelled)."""
    error: str
    duration_ms: int
    http_status: int | None = None
    retry_after_s: float | None = None
    """The upstream's Retry-After, when it sent one (as sent; the node honours at most its cap)."""
    backoff_ms: int = 0
    """Time slept before this attempt."""
    hedge: bool = False
    """Started by the hedge timer while an earlier attempt was still running."""


@dataclass(slots=True)
class Cursor:
    """Where one request is in its plan: candidates are tried once each, in order (pass 0);
    those that failed with a retryable error get further passes."""

    pending: tuple[Candidate, ...]
    index: int = 0
    passes: int = 0
    """The pass ``pending`` belongs to (0: the first)."""
    again: list[Candidate] = field(default_factory=list)
    """Failed with a retryable error in this pass: worth another."""
    too_small_window: int = 0
    """After context_too_long: only larger windows may help."""
    out_of_time: bool = False


class Launch(NamedTuple):
    """A candidate cleared to be tried now (its half-open probe slot, if any, taken)."""

    candidate: Candidate
    state: DeploymentState
    wait: float
    """Seconds slept before it (backoff, Retry-After)."""
    remaining: float
    """Seconds left until the caller's deadline when it starts."""


@dataclass(slots=True)
class Flight:
    """One attempt of a hedged request, running as its own task."""

    seq: int
    """Its place in the order attempts were started."""
    launch: Launch
    started: float
    hedge: bool


async def bounded(attempt: Callable[[Candidate, float], Awaitable[T]], launch: Launch) -> T:
    """Run one attempt; the caller's deadline holds whatever the adapter does with its timeout."""
    async with asyncio.timeout(launch.remaining):
        return await attempt(launch.candidate, launch.remaining)


def timed_out(launch: Launch, exc: TimeoutError) -> ProviderError:
    error = UpstreamTimeout(
        f"{launch.candidate.label}: no answer within the {launch.remaining:.3f} s left",
        provider=launch.candidate.provider.id,
    )
    error.__cause__ = exc
    return error


def final_error(
    attempts: list[AttemptRecord],
    skipped: list[tuple[str, str]],
    last: ProviderError | None,
    out_of_time: bool,
    past_deadline: bool,
) -> Exception:
    """What a dispatch that served nothing ends with. ``out_of_time``: it stopped for want of
    time; ``past_deadline``: the caller's deadline has passed now."""
    made = "; ".join(f"{a.candidate.label}: {a.outcome}" for a in attempts) or "none"
    if out_of_time or (attempts and past_deadline):
        return DeadlineExceeded(f"deadline exceeded after {len(attempts)} attempt(s) [{made}]")
    if last is not None and not last.retryable and all(a.outcome == last.kind for a in attempts):
        # Every try said the same request-level thing (too long, filtered):
        # that error is more useful to the caller than "all failed".
        return last
    if last is not None:
        return AllCandidatesFailed(f"all {len(attempts)} attempt(s) failed [{made}]; last: {last.message}")
    why = "; ".join(f"{label}: {reason}" for label, reason in skipped) or "the plan is empty"
    return AllCandidatesFailed(f"no candidate could be tried ({why})")
