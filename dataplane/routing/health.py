"""Passive health and a circuit breaker per deployment.

The dispatcher owns one ``DeploymentState`` per deployment for the life of the
node; ``plan_route`` reads a ``HealthView`` of them (breaker state, latency
EWMA, error rate) so routing prefers healthy, fast deployments while staying
pure.

Breaker transitions::

    CLOSED ──(N consecutive failures, or error-rate EWMA ≥ threshold
              after enough calls)──► OPEN
    OPEN ──(cool-down elapsed)──► HALF_OPEN   (at most ``half_open_probes`` in flight)
    HALF_OPEN ──(a probe succeeds)──► CLOSED
    HALF_OPEN ──(a probe fails)──► OPEN       (cool-down starts again)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Node-wide breaker and health tuning (a deployment's health is not a tenant's business)."""

    failure_threshold: int = 5
    """Consecutive failures that open the breaker."""
    error_rate_threshold: float = 0.5
    """Error-rate EWMA that opens the breaker once ``min_calls`` were seen."""
    min_calls: int = 20
    cooldown_s: float = 30.0
    """Time open before probes are let through."""
    half_open_probes: int = 1
    """Concurrent probes allowed while half-open."""
    ewma_alpha: float = 0.2
    """Weight of the newest observation in latency and error-rate averages."""


DEFAULT_BREAKER = BreakerSettings()

FAILURE_KINDS = frozenset(
    {"server_error", "timeout", "overloaded", "protocol_error", "auth", "quota_exhausted", "model_not_found"}
)
"""Error kinds that say the deployment is unwell. Rate limits (handled by
Retry-After), context-too-long, content filtering and bad requests are about
the request or the caller's quota and must not open the breaker. A timeout
counts even when the caller's deadline cut the attempt short: a deployment
slower than its callers' deadlines fails them, and only counting it lets the
breaker and the latency average route around it."""

DEFAULT_MAX_RETRY_AFTER_S = 300.0
"""Longest Retry-After (or Gemini ``retryDelay``) a node honours. An upstream's
delay is untrusted input: uncapped, one 429 saying a year would park a
deployment for every tenant of the node."""


@dataclass(frozen=True, slots=True)
class DeploymentHealth:
    """What routing may know about one deployment at one instant."""

    state: BreakerState = BreakerState.CLOSED
    latency_ms: float | None = None
    """EWMA of attempts' latency: successes, and timeouts as at least their elapsed
    time (censored observations); ``None`` until one was seen."""
    error_rate: float = 0.0
    """EWMA of failures (1) and successes (0)."""
    blocked_for_s: float = 0.0
    """Seconds until the deployment's last Retry-After expires (0: not blocked)."""


class HealthView(Protocol):
    """Read-only per-deployment health, keyed by ``Candidate.key``."""

    def get(self, key: str) -> DeploymentHealth | None: ...

    def troubled(self) -> Mapping[str, DeploymentHealth]:
        """Deployments to avoid right now (breaker open, or a Retry-After running).

        Usually empty, which lets routing skip a lookup per candidate.
        """
        ...


class DeploymentState:
    """Mutable breaker and averages of one deployment. Owned by one Dispatcher (one event loop)."""

    __slots__ = (
        "_clock",
        "_key",
        "_max_block_s",
        "_settings",
        "_troubled",
        "blocked_until",
        "calls",
        "consecutive_failures",
        "error_rate",
        "latency_ms",
        "opened_at",
        "probes_in_flight",
        "state",
    )

    def __init__(
        self,
        settings: BreakerSettings,
        clock: Callable[[], float],
        key: str = "",
        troubled: set[str] | None = None,
        max_block_s: float = DEFAULT_MAX_RETRY_AFTER_S,
    ) -> None:
        """``troubled`` is the owner's set of keys to re-check; this state adds ``key``
        to it whenever it opens or is blocked, so the owner never scans every deployment.
        ``max_block_s`` caps every Retry-After honoured (``block_for``)."""
        self._settings = settings
        self._max_block_s = max_block_s
        self._clock = clock
        self._key = key
        self._troubled = troubled
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.calls = 0
        self.error_rate = 0.0
        self.latency_ms: float | None = None
        self.opened_at = 0.0
        self.probes_in_flight = 0
        self.blocked_until = 0.0

    def detach(self) -> None:
        """Its owner forgot it (``Dispatcher.retain``): it no longer reports to the owner."""
        self._troubled = None

    def current(self) -> BreakerState:
        """The state now: an open breaker whose cool-down elapsed reads as half-open."""
        if self.state is BreakerState.OPEN and self._clock() - self.opened_at >= self._settings.cooldown_s:
            self.state = BreakerState.HALF_OPEN
            self.probes_in_flight = 0
        return self.state

    def admits(self) -> bool:
        """Would ``try_acquire`` succeed now? (Does not take a probe.)"""
        state = self.current()
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and self.probes_in_flight < self._settings.half_open_probes
        )

    def try_acquire(self) -> bool:
        """May a request go to this deployment now? A half-open admit counts as a probe."""
        state = self.current()
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self.probes_in_flight < self._settings.half_open_probes:
            self.probes_in_flight += 1
            return True
        return False

    def release_probe(self) -> None:
        """A probe ended without a verdict on the deployment (cancelled, or a request error)."""
        if self.state is BreakerState.HALF_OPEN and self.probes_in_flight > 0:
            self.probes_in_flight -= 1

    def record_success(self, latency_ms: float) -> None:
        alpha = self._settings.ewma_alpha
        self.calls += 1
        self.consecutive_failures = 0
        self.error_rate *= 1 - alpha
        self.latency_ms = (
            latency_ms
            if self.latency_ms is None
            else self.latency_ms + alpha * (latency_ms - self.latency_ms)
        )
        if self.state is not BreakerState.CLOSED:
            self.state = BreakerState.CLOSED
            self.probes_in_flight = 0

    def observe_at_least(self, latency_ms: float) -> None:
        """A censored latency: the attempt took *at least* ``latency_ms`` (it timed out,
        or was cancelled because another answered first). It can only raise the
        average: an average already above it learns nothing from it."""
        if self.latency_ms is None:
            self.latency_ms = latency_ms
        elif latency_ms > self.latency_ms:
            self.latency_ms += self._settings.ewma_alpha * (latency_ms - self.latency_ms)

    def record_failure(self, at_least_ms: float | None = None) -> None:
        """A failure; ``at_least_ms`` for a timeout, which also feeds the latency average."""
        s = self._settings
        if at_least_ms is not None:
            self.observe_at_least(at_least_ms)
        self.calls += 1
        self.consecutive_failures += 1
        self.error_rate += s.ewma_alpha * (1 - self.error_rate)
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED
            and (
                self.consecutive_failures >= s.failure_threshold
                or (self.calls >= s.min_calls and self.error_rate >= s.error_rate_threshold)
            )
        ):
            self.state = BreakerState.OPEN
            self.opened_at = self._clock()
            self.probes_in_flight = 0
            self._mark()

    def block_for(self, seconds: float) -> float:
        """Honour a Retry-After: no new attempts until it passes. Returns the seconds
        honoured: at most the node's cap; nothing for a delay that is not a positive number."""
        if not seconds > 0:  # also NaN
            return 0.0
        seconds = min(seconds, self._max_block_s)
        self.blocked_until = max(self.blocked_until, self._clock() + seconds)
        self._mark()
        return seconds

    def _mark(self) -> None:
        if self._troubled is not None:
            self._troubled.add(self._key)

    def blocked_for(self) -> float:
        return max(0.0, self.blocked_until - self._clock())

    def snapshot(self) -> DeploymentHealth:
        return DeploymentHealth(self.current(), self.latency_ms, self.error_rate, self.blocked_for())


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
