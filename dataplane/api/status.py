"""How a refused request ends on the gRPC front door.

The status and message come from ``dataplane.outcome``; the correlation id is
appended to every message and sent as ``x-correlation-id`` trailing metadata,
the refusal's evidence record id as ``x-evidence-id``.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from dataplane.outcome import Outcome

CORRELATION_HEADER = "x-correlation-id"
EVIDENCE_HEADER = "x-evidence-id"


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
