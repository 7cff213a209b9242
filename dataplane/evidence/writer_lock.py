"""One writer per chain: a running log holds an exclusive ``flock`` on ``<chain>.lock``.

Two processes appending to one chain (a second node started on the same data dir, or an
export signing a fresh checkpoint while the node signs its own) would interleave records
or checkpoints and break the chain. The lock is advisory and held for the writer's
lifetime; the kernel drops it when the process dies, however it dies, so a crashed node
never leaves a stale lock. The file holds the holder's pid, for the refusal's message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

MAX_PID_BYTES = 32


class ChainBusy(OSError):
    """Another process holds the chain's lock; the message names the chain and the pid."""


def lock_path(chain_file: Path) -> Path:
    return chain_file.with_name(f"{chain_file.name}.lock")


class WriterLock:
    def __init__(self, chain_file: Path) -> None:
        self.chain_file = chain_file
        self.path = lock_path(chain_file)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``ChainBusy`` at once (never waits)."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                # A FIFO or a device here failed the start with a bare "[Errno 22] Invalid
                # argument" (from the truncate below), naming no file.
                raise OSError(errno.EINVAL, "not a regular file", str(self.path))
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, MAX_PID_BYTES, 0).decode("ascii", "replace").strip()
            os.close(fd)
            pid = f"pid {holder}" if holder.isdigit() else "another process"
            raise ChainBusy(
                f"{self.chain_file.name}: written by a running process ({pid}); stop it first"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go (closing the file drops the lock); the file stays, so nobody races on it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
