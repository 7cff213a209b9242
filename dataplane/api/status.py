"""The one place where an exception becomes a gRPC status.

Every error a caller sees goes through ``to_status``: data-plane errors carry
their own status (see the tree in ``dataplane.errors``), dispatch failures are
unwrapped to the error the caller should see, and anything unexpected becomes
INTERNAL without leaking its text. When every attempt of a dispatch failed the
same way, the caller gets that failure's status rather than the generic
UNAVAILABLE of ``AllCandidatesFailed``: a request that was only ever rate
limited is RESOURCE_EXHAUSTED, so the caller backs off instead of retrying at
once. The correlation id is appended to every message and sent as
``x-correlation-id`` trailing metadata.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import NoReturn

import grpc

from dataplane.errors import AllCandidatesFailed, DeadlineExceeded, ProviderError, SignalboxError
from dataplane.routing.dispatch import DispatchFailed

log = logging.getLogger("signalbox.dataplane.api")

CORRELATION_HEADER = "x-correlation-id"
EVIDENCE_HEADER = "x-evidence-id"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A request's result as evidence and the caller see it."""

    code: grpc.StatusCode
    message: str
    kind: str = ""
    """The error class name, or empty for success."""


OK = Outcome(grpc.StatusCode.OK, "")


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
    if isinstance(error, SignalboxError):
        return Outcome(_status(exc, error), error.message, type(error).__name__)
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        wrapped = DeadlineExceeded("deadline exceeded")
        return Outcome(wrapped.status, wrapped.message, "DeadlineExceeded")
    return Outcome(grpc.StatusCode.INTERNAL, "internal error", type(error).__name__)


def _status(exc: BaseException, error: SignalboxError) -> grpc.StatusCode:
    if isinstance(exc, DispatchFailed) and isinstance(error, AllCandidatesFailed) and exc.attempts:
        kinds = {a.outcome for a in exc.attempts}
        if len(kinds) == 1:
            return _STATUS_OF_KIND.get(kinds.pop(), error.status)
    return error.status


async def abort(
    context: grpc.aio.ServicerContext[object, object],
    outcome: Outcome,
    correlation_id: str,
    evidence_id: str = "",
) -> NoReturn:
    """End the call with ``outcome``; the correlation id goes in message and trailers,
    the refusal's evidence record id (when written) in trailers."""
    trailers = [(CORRELATION_HEADER, correlation_id)]
    if evidence_id:
        trailers.append((EVIDENCE_HEADER, evidence_id))
    await context.abort(
        outcome.code,
        f"{outcome.message} (correlation id {correlation_id})",
        trailing_metadata=tuple(trailers),
    )
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
