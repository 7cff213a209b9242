"""Embedded PostgreSQL (pgserver) for when no database URL is configured.

It is a real PostgreSQL server in a local data directory, reached over a unix
socket; never SQLite.

pgserver shares one server between the processes that use a data directory and
keeps their PIDs in ``<pgdata>/.handle_pids.json``; the last one to let go stops
the server. A process killed with SIGKILL never lets go, so its PID stays there
and no later process would ever stop the server. ``start_embedded`` therefore
first forgets the handles of dead processes (reclaiming an orphaned server: the
next orderly stop stops it), and retries a start that fails (a server still
crash-recovering or shutting down refuses for a moment) with backoff for a
bounded time.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

log = logging.getLogger(__name__)

HANDLES_FILE = ".handle_pids.json"
START_RETRY_SECONDS = 30.0


def _private_runtime_dir() -> None:
    # pgserver resolves platformdirs' runtime dir at import time and warns when
    # XDG_RUNTIME_DIR is unset; the warning is noise (and an error under pytest),
    # so give it a private directory of its own first.
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path = Path(tempfile.gettempdir()) / f"signalbox-runtime-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(path)


EMBEDDED_DIR = "postgres"
"""Embedded PostgreSQL's PGDATA, under the control plane's data dir."""


def data_dir_mode(data_dir: Path) -> int:
    """The mode the control plane's data dir may have: 0700, or 0711 when embedded
    PostgreSQL runs as another user (pgserver's own, when started by root). That user must
    pass through the data dir to reach PGDATA, or ``pg_ctl stop`` fails and the server is
    killed instead of shut down; it may still never list or read the directory (the KEK is
    there). pgserver itself opens every parent of PGDATA to 0755 when it starts it."""
    try:
        owner = (data_dir / EMBEDDED_DIR).stat().st_uid
    except OSError:
        return 0o700
    return 0o711 if owner != os.geteuid() else 0o700


def to_sqlalchemy_url(uri: str, database: str | None = None) -> str:
    """Turn a libpq URI into a ``postgresql+psycopg://`` URL, keeping the socket ``host`` query."""
    parts = urlsplit(uri)
    scheme = "postgresql+psycopg"
    path = f"/{database}" if database is not None else parts.path
    query = urlencode(parse_qsl(parts.query))
    return urlunsplit((scheme, parts.netloc, path, query, ""))


@dataclass(slots=True)
class EmbeddedPostgres:
    """A running embedded server; ``stop`` it when done."""

    server: Any
    data_dir: Path

    def url(self, database: str = "postgres") -> str:
        return to_sqlalchemy_url(self.server.get_uri(), database)

    def stop(self) -> None:
        self.server.cleanup()


def start_embedded(data_dir: Path, *, retry_for: float = START_RETRY_SECONDS) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server whose PGDATA is ``data_dir``. Blocking.

    Reclaims a server orphaned by a killed process, and retries a failing start with
    backoff for up to ``retry_for`` seconds; then raises ``OSError`` naming the cause.
    """
    _private_runtime_dir()
    import pgserver  # lazily: only a control plane without a database URL needs it
    from pgserver.postgres_server import PostgresServer

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.expanduser().resolve()
    deadline = time.monotonic() + retry_for
    delay = 0.2
    attempt = 0
    while True:
        attempt += 1
        with PostgresServer._lock:
            forget_dead_handles(pgdata)
            forget_dead_postmaster(pgdata)
        try:
            server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
            if not _accepts_connections(server.get_uri()):
                # Attached to a server that is going down (e.g. just crashed): let go of it
                # without stopping it, and try again once it is gone.
                with PostgresServer._lock:
                    server.global_process_id_list.get_and_remove(os.getpid())
                raise ConnectionRefusedError(f"the server in {pgdata} does not accept connections")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, AssertionError, OSError) as exc:
            # pgserver registers the instance before it starts the server: forget the failed
            # one, or the next attempt would be handed it back (and its exit hook would run).
            failed = PostgresServer._instances.pop(pgdata, None)
            if failed is not None:
                atexit.unregister(failed._cleanup)
            if time.monotonic() + delay > deadline:
                raise OSError(
                    f"embedded PostgreSQL in {pgdata} did not start within {retry_for:.0f}s "
                    f"({attempt} attempts): {type(exc).__name__}: {exc}; see {pgdata / 'log'}"
                ) from exc
            log.warning(
                "embedded PostgreSQL in %s did not start (attempt %d: %s); retrying in %.1fs",
                pgdata,
                attempt,
                type(exc).__name__,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        return EmbeddedPostgres(server, data_dir)


def _accepts_connections(uri: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(uri, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def forget_dead_postmaster(pgdata: Path) -> None:
    """Remove a ``postmaster.pid`` whose process is a zombie: a dead server whose exit its
    parent has not collected yet. pgserver (and PostgreSQL itself) would take it for a live
    server and refuse to start a new one. Call with pgserver's lock held."""
    import psutil

    path = pgdata / "postmaster.pid"
    try:
        pid = int(path.read_text().splitlines()[0])
        zombie = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except (OSError, ValueError, IndexError, psutil.Error):
        return
    if zombie:
        log.warning("embedded PostgreSQL in %s: postmaster %d is dead; removing its lock file", pgdata, pid)
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def forget_dead_handles(pgdata: Path) -> list[int]:
    """Drop the PIDs of dead processes from pgserver's handle list; return the ones dropped.

    Call with pgserver's inter-process lock held. A server whose every handle is dead is
    an orphan: after this the next process to attach owns it and stops it when done.
    """
    path = pgdata / HANDLES_FILE
    try:
        pids = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("embedded PostgreSQL: unreadable %s (%s); starting it afresh", path, exc)
        pids = []
    if not isinstance(pids, list):
        pids = []
    alive = [p for p in pids if isinstance(p, int) and p != os.getpid() and _alive(p)]
    # Our own PID stays only if this process already holds a handle (pgserver caches those).
    if os.getpid() in pids and pgdata in _instances():
        alive.append(os.getpid())
    dead = [p for p in pids if p not in alive]
    if dead or alive != pids:
        if not alive:
            log.warning(
                "embedded PostgreSQL in %s was left by process(es) %s that died; reclaiming it",
                pgdata,
                dead,
            )
        path.write_text(json.dumps(alive))
    return dead


def _instances() -> dict[Path, Any]:
    from pgserver.postgres_server import PostgresServer

    return PostgresServer._instances
