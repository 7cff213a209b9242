"""Files a node writes: private directories and atomic, durable replacement of a file.

Below every other data-plane module (snapshots, quota budgets, keys use them)."""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed; the directory itself is 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def atomic_write(path: Path, *parts: bytes | memoryview) -> None:
    """Replace ``path`` with ``parts``, 0600: a reader (or a crash) sees the old file or the
    new one whole, and the new one is on disk (file and directory entry fsynced) on return."""
    tmp = path.with_name(path.name + ".tmp")
    with suppress(FileNotFoundError):
        tmp.unlink()  # a leftover of a crash may have other modes; O_EXCL below needs it gone
    # 0600 from the first byte: never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        for data in parts:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename itself is durable only once the directory entry is.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
