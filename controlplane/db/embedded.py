"""Embedded PostgreSQL (pgserver) for when no database URL is configured.

It is a real PostgreSQL server in a local data directory, reached over a unix
socket; never SQLite.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


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


def start_embedded(data_dir: Path) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server whose PGDATA is ``data_dir``. Blocking."""
    _private_runtime_dir()
    import pgserver  # lazily: only a control plane without a database URL needs it

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    return EmbeddedPostgres(server, data_dir)
