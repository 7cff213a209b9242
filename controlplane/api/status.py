"""The one table that turns exceptions into gRPC statuses for the control plane's APIs.

Every message leaves bounded: control characters escaped (a message is one line a
terminal shows as it is) and at most ``MESSAGE_BYTES`` of UTF-8. Values a caller sent
are clipped where a message quotes them (``controlplane.errors.shown``).

The database failing under a call (restarted, unreachable, out of connections, a statement
cancelled or a lock not granted in time) is the caller's UNAVAILABLE: nothing of the call
was committed that it cannot retry, and the process keeps serving. A deadlock or a
serialization failure is ABORTED (retry the call). The message is ours: the driver's text
names the database's host, socket or user, which are not the caller's business.
"""

from __future__ import annotations

import re

import grpc
import psycopg
import sqlalchemy.exc

from signalbox.errors import Error

MESSAGE_BYTES = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MORE = "...(clipped)"

# Checked in order: the first matching class decides. Errors that know their own
# status (ours and the data plane's, reached through ExplainRoute) carry it.
_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode | None], ...] = ((Error, None),)

# The database's failures, by SQLSTATE class (the driver's exception: SQLAlchemy wraps it as
# ``orig``). Connection (08), insufficient resources (53: too many connections, disk full),
# operator intervention (57: shutdown, a cancelled statement) and system errors (58) pass;
# so does a lock not granted in time (55P03). A deadlock or serialization failure (40) is
# the call's to retry. Any other SQLSTATE is a bug of ours (e.g. a value past what a column
# holds), reported as INTERNAL.
DATABASE_BUSY = "the database did not answer in time (a statement or a lock wait timed out); retry"
DATABASE_CONFLICT = "the database aborted the transaction (a deadlock or a serialization conflict); retry"
DATABASE_FULL = "every database connection of the control plane is in use; retry"
DATABASE_UNAVAILABLE = "the database is unavailable; retry"
_TRANSIENT_CLASSES = ("08", "53", "57", "58")
_BUSY = ("57014", "55P03")  # query_canceled (statement_timeout), lock_not_available (lock_timeout)


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


def database_status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """(status, message) when ``exc`` is the database failing under the call; else None."""
    if isinstance(exc, sqlalchemy.exc.TimeoutError):  # no pooled connection came free in time
        return grpc.StatusCode.UNAVAILABLE, DATABASE_FULL
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE
        exc = exc.orig if exc.orig is not None else exc
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate or ""
    if state in _BUSY:
        return grpc.StatusCode.UNAVAILABLE, DATABASE_BUSY
    if state.startswith("40"):
        return grpc.StatusCode.ABORTED, DATABASE_CONFLICT
    if state.startswith(_TRANSIENT_CLASSES) or (
        not state and isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    ):
        return grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE
    return None
