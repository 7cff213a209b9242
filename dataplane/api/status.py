"""The one place where an exception becomes a gRPC status.

Every error a caller sees goes through ``to_status``: data-plane errors carry
their own status (see the tree in ``dataplane.errors``), dispatch failures are
unwrapped to the error the caller should see, and anything unexpected becomes
INTERNAL without leaking its text. The correlation id is appended to every
message and sent as ``x-correlation-id`` trailing metadata.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import NoReturn

import grpc

from dataplane.errors import DeadlineExceeded, SignalboxError
from dataplane.routing.dispatch import DispatchFailed

log = logging.getLogger("signalbox.dataplane.api")

CORRELATION_HEADER = "x-correlation-id"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A request's result as evidence and the caller see it."""

    code: grpc.StatusCode
    message: str
    kind: str = ""
    """The error class name, or empty for success."""


OK = Outcome(grpc.StatusCode.OK, "")


def caller_error(exc: BaseException) -> BaseException:
    """The error the caller should see for ``exc`` (dispatch failures unwrapped)."""
    if isinstance(exc, DispatchFailed):
        return exc.error
    return exc


def to_status(exc: BaseException) -> Outcome:
    """Map ``exc`` to a status and message (without the correlation id)."""
    error = caller_error(exc)
    if isinstance(error, SignalboxError):
        return Outcome(error.status, error.message, type(error).__name__)
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        wrapped = DeadlineExceeded("deadline exceeded")
        return Outcome(wrapped.status, wrapped.message, "DeadlineExceeded")
    return Outcome(grpc.StatusCode.INTERNAL, "internal error", type(error).__name__)


async def abort(
    context: grpc.aio.ServicerContext[object, object], outcome: Outcome, correlation_id: str
) -> NoReturn:
    """End the call with ``outcome``; the correlation id goes in message and trailers."""
    await context.abort(
        outcome.code,
        f"{outcome.message} (correlation id {correlation_id})",
        trailing_metadata=((CORRELATION_HEADER, correlation_id),),
    )
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
