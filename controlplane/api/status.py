"""The one table that turns exceptions into gRPC statuses for the control plane's APIs.

Every message leaves bounded: control characters escaped (a message is one line a
terminal shows as it is) and at most ``MESSAGE_BYTES`` of UTF-8. Values a caller sent
are clipped where a message quotes them (``controlplane.errors.shown``).

The database failing under a call is UNAVAILABLE (or ABORTED), with a message of ours
(``controlplane.db.failures``).
"""

from __future__ import annotations

import re

import grpc

from controlplane.db.failures import database_status
from signalbox.errors import Error

MESSAGE_BYTES = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MORE = "...(clipped)"

# Checked in order: the first matching class decides. Errors that know their own
# status (ours and the data plane's, reached through ExplainRoute) carry it.
_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode | None], ...] = ((Error, None),)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def bounded(message: str) -> str:
    """``message`` with control characters escaped (``\\xNN``), cut to ``MESSAGE_BYTES``."""
    text = _CONTROL.sub(_escape, message)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text.encode("utf-8")) <= MESSAGE_BYTES:
        return text
    room = MESSAGE_BYTES - len(_MORE)
    return text.encode("utf-8")[:room].decode("utf-8", "ignore") + _MORE


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """(status, bounded message) for a known error; None for a bug (reported as INTERNAL, unexplained)."""
    for cls, code in _TABLE:
        if isinstance(exc, cls):
            if code is None:
                return exc.status, bounded(exc.message)  # type: ignore[attr-defined]
            return code, bounded(str(exc))
    return database_status(exc)
