"""The database failing under a call, as the gRPC status a caller gets.

Restarted, unreachable, out of connections, a statement cancelled or a lock not granted in
time: UNAVAILABLE, since nothing of the call was committed that it cannot retry, and the
process keeps serving. A deadlock or a serialization failure: ABORTED (retry the call). The
message is ours: the driver's text names the database's host, socket or user, which are
not the caller's business (it stays in the log).
"""

from __future__ import annotations

import grpc
import psycopg
import sqlalchemy.exc

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
