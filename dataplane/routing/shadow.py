"""Shadow traffic: one mirrored call whose outcome is reported, never served.

``Dispatcher.shadow`` starts ``mirror`` as a fire-and-forget task; the shadow
deployment's breaker and health learn from it like from any call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dataplane.errors import ProviderError
from dataplane.routing.attempts import CANCELLED
from dataplane.routing.candidate import Candidate
from dataplane.routing.health import FAILURE_KINDS, DeploymentState

T = TypeVar("T")

_log = logging.getLogger("dataplane.routing.dispatch")


@dataclass(frozen=True, slots=True)
class ShadowOutcome(Generic[T]):
    """How a mirrored request went; given to the ``on_outcome`` callback of ``Dispatcher.shadow``."""

    candidate: Candidate
    outcome: str
    """"ok", an error kind, "skipped" (breaker open, Retry-After, no time) or "cancelled"
    (in flight when the node stopped it: its drain ran out)."""
    error: str
    duration_ms: int
    result: T | None = None


async def mirror(
    candidate: Candidate,
    state: DeploymentState,
    attempt: Callable[[Candidate, float], Awaitable[T]],
    deadline: float,
    on_outcome: Callable[[ShadowOutcome[T]], object],
    clock: Callable[[], float],
) -> None:
    """One try, no fallback, within the caller's deadline; ``on_outcome`` hears how it went,
    also when the task is cancelled while the upstream has the request (the node's stop ran
    out of drain time): that upstream may bill it, so it is reported before the cancellation
    goes on."""
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
            # Counted like any timeout (see FAILURE_KINDS): at least this slow.
            elapsed_ms = (clock() - started) * 1000
            state.record_failure(elapsed_ms)
            outcome = ShadowOutcome(candidate, "timeout", "no answer in time", int(elapsed_ms))
        except ProviderError as exc:
            elapsed_ms = (clock() - started) * 1000
            if exc.kind in FAILURE_KINDS:
                state.record_failure(elapsed_ms if exc.kind == "timeout" else None)
            else:
                state.release_probe()
            if exc.retry_after:
                state.block_for(exc.retry_after)
            outcome = ShadowOutcome(candidate, exc.kind, exc.message, int(elapsed_ms))
        except asyncio.CancelledError:
            # No verdict on the deployment: the node gave up on it, the deployment did not fail.
            state.release_probe()
            elapsed_ms = (clock() - started) * 1000
            why = "the node stopped while the upstream had it"
            _report(on_outcome, ShadowOutcome(candidate, CANCELLED, why, int(elapsed_ms)))
            raise
        except BaseException:
            state.release_probe()
            raise
        else:
            elapsed = clock() - started
            state.record_success(elapsed * 1000)
            outcome = ShadowOutcome(candidate, "ok", "", int(elapsed * 1000), result)
    _report(on_outcome, outcome)


def _report(on_outcome: Callable[[ShadowOutcome[T]], object], outcome: ShadowOutcome[T]) -> None:
    try:
        on_outcome(outcome)
    except Exception:
        # Nobody awaits this task: a failing recorder must not surface as an
        # unretrieved task exception, and must not touch the served request.
        _log.exception("shadow outcome callback failed for %s", outcome.candidate.label)
