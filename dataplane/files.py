"""Files a node writes and reads: private directories, atomic and durable replacement of a
file, and bounded reads of a file someone else may have planted.

Below every other data-plane module (snapshots, quota budgets, keys use them)."""

from __future__ import annotations

import errno
import os
import stat
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
    try:
        with os.fdopen(fd, "wb") as f:
            for data in parts:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A full disk, or a directory where the file should go: the old file stays, and no
        # half-written copy beside it.
        with suppress(OSError):
            tmp.unlink()
        raise
    # The rename itself is durable only once the directory entry is.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_regular(path: Path, limit: int, *, nofollow: bool = False, mode: int | None = None) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them; ``OSError``
    otherwise: ``EINVAL`` "not a regular file", ``EFBIG`` "larger than ``limit`` bytes", or
    what opening or reading raised (``ELOOP`` for a final symlink when ``nofollow``).

    Opened once and without blocking, then checked on what was opened: a FIFO planted where
    a file should be cannot make the reader wait for a writer, a device such as /dev/zero
    cannot make it read without end, and ``mode`` (when given) is fixed on that file, never
    on the target of a link swapped in meanwhile."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        if mode is not None:
            os.fchmod(fd, mode)
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew after the check
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return data
