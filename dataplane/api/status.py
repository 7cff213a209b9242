"""How a refused request ends on the gRPC front door.

The status and message come from ``dataplane.outcome``; the correlation id is
appended to every message and sent as ``x-correlation-id`` trailing metadata,
the refusal's evidence record id as ``x-evidence-id``; a refusal by a rate limit or
budget adds ``retry-after`` (whole seconds).

Every answer and every refusal whose record was written also carries, in trailing
metadata, ``signalbox-evidence-id: <record id>`` and ``signalbox-evidence: written``: the
record is with the operating system (it survives the node process crashing) and is
fsynced within the node's fsync window (50 ms by default), not before the answer; see
``dataplane.evidence.log`` for why. A refusal whose record could not be written has
neither.
"""

from __future__ import annotations

import math
from typing import NoReturn

import grpc

from dataplane.outcome import Outcome

CORRELATION_HEADER = "x-correlation-id"
EVIDENCE_HEADER = "x-evidence-id"
EVIDENCE_ID_TRAILER = "signalbox-evidence-id"
EVIDENCE_STATE_TRAILER = "signalbox-evidence"
RETRY_AFTER_HEADER = "retry-after"
"""Whole seconds (at least 1) before a refused call is worth retrying: our own limits only."""
EVIDENCE_WRITTEN = "written"
"""The record is written to the OS, fsync pending (within the fsync window)."""


def evidence_trailers(correlation_id: str, evidence_id: str) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a finished call: correlation id and, when the record was
    written, its id and durability."""
    if not evidence_id:
        return ((CORRELATION_HEADER, correlation_id),)
    return (
        (CORRELATION_HEADER, correlation_id),
        (EVIDENCE_ID_TRAILER, evidence_id),
        (EVIDENCE_STATE_TRAILER, EVIDENCE_WRITTEN),
    )


async def abort(
    context: grpc.aio.ServicerContext[object, object],
    outcome: Outcome,
    correlation_id: str,
    evidence_id: str = "",
) -> NoReturn:
    """End the call with ``outcome``; the correlation id goes in message and trailers,
    the refusal's evidence record id (when written) in trailers."""
    trailers = evidence_trailers(correlation_id, evidence_id)
    if evidence_id:
        trailers += ((EVIDENCE_HEADER, evidence_id),)
    if outcome.retry_after is not None:
        trailers += ((RETRY_AFTER_HEADER, str(max(1, math.ceil(outcome.retry_after)))),)
    await context.abort(
        outcome.code,
        f"{outcome.message} (correlation id {correlation_id})",
        trailing_metadata=trailers,
    )
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
