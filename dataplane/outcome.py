"""The one place where an exception becomes a request's outcome: a status and a message.

Every error a caller sees goes through ``to_status``: data-plane errors carry
their own status (see the tree in ``dataplane.errors``), dispatch failures are
unwrapped to the error the caller should see, and anything unexpected becomes
INTERNAL without leaking its text. No message is longer than
``dataplane.errors.MAX_MESSAGE_CHARS``: gRPC sends it in a header, and one too
long for the header limit would reach the caller as another status. When every
attempt of a dispatch failed the same way, the caller gets that failure's status
rather than the generic UNAVAILABLE of ``AllCandidatesFailed``: a request that
was only ever rate limited is RESOURCE_EXHAUSTED, so the caller backs off instead
of retrying at once. Statuses are gRPC's codes, the canonical set every front door maps from.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc

from dataplane.errors import (
    AllCandidatesFailed,
    DeadlineExceeded,
    DispatchFailed,
    LimitExceeded,
    ProviderError,
    QuotaUnavailable,
    SignalboxError,
    clipped,
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A request's result as evidence and the caller see it."""

    code: grpc.StatusCode
    message: str
    kind: str = ""
    """The error class name, or empty for success."""
    retry_after: float | None = None
    """Seconds the caller should wait (our own limits only: ``LimitExceeded``,
    ``QuotaUnavailable``); None: no advice."""


OK = Outcome(grpc.StatusCode.OK, "")
CANCELLED = Outcome(grpc.StatusCode.CANCELLED, "caller cancelled the request", "Cancelled")


def _provider_errors(cls: type[ProviderError]) -> list[type[ProviderError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _provider_errors(child))]


_STATUS_OF_KIND: dict[str, grpc.StatusCode] = {c.kind: c.status for c in _provider_errors(ProviderError)}
"""A provider failure kind (as in ``AttemptRecord.outcome``) to its class's status."""


def caller_error(exc: BaseException) -> BaseException:
    """The error the caller should see for ``exc`` (dispatch failures unwrapped)."""
    if isinstance(exc, DispatchFailed):
        return exc.error
    return exc


def to_status(exc: BaseException) -> Outcome:
    """Map ``exc`` to a status and message (without the correlation id)."""
    error = caller_error(exc)
    if isinstance(error, LimitExceeded | QuotaUnavailable):
        return Outcome(error.status, clipped(error.message), type(error).__name__, error.retry_after)
    if isinstance(error, SignalboxError):
        return Outcome(_status(exc, error), clipped(error.message), type(error).__name__)
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        wrapped = DeadlineExceeded("deadline exceeded")
        return Outcome(wrapped.status, wrapped.message, "DeadlineExceeded")
    return Outcome(grpc.StatusCode.INTERNAL, "internal error", type(error).__name__)


def _status(exc: BaseException, error: SignalboxError) -> grpc.StatusCode:
    if isinstance(exc, DispatchFailed) and isinstance(error, AllCandidatesFailed) and exc.attempts:
        kinds: set[Any] = {a.outcome for a in exc.attempts}
        if len(kinds) == 1:
            return _STATUS_OF_KIND.get(kinds.pop(), error.status)
    return error.status
