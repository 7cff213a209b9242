"""The one table that turns exceptions into gRPC statuses for the control plane's APIs."""

from __future__ import annotations

import grpc

from signalbox.errors import Error

# Checked in order: the first matching class decides. Errors that know their own
# status (ours and the data plane's, reached through ExplainRoute) carry it.
_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode | None], ...] = ((Error, None),)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """(status, message) for a known error; None for a bug (reported as INTERNAL, unexplained)."""
    for cls, code in _TABLE:
        if isinstance(exc, cls):
            if code is None:
                return exc.status, exc.message  # type: ignore[attr-defined]
            return code, str(exc)
    return None
