"""Random hex ids (correlation ids, evidence record ids, tool-call ids) from a buffer of the
operating system's random bytes.

``secrets.token_hex`` asks the kernel for every id (``getrandom``): a system call on every
request, ~2 us of a worker's CPU under load on this machine (a VM's system calls cost ~10x
what they do in a tight loop). The bytes here are the same ones (``os.urandom``), read 4 KiB
at a time and handed out in order, never twice. A forked child drops the buffer it inherited:
it would otherwise hand out the same ids as its parent.
"""

from __future__ import annotations

import os
import threading

REFILL_BYTES = 4096

_lock = threading.Lock()
_buffer = b""
_at = 0


def token_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as ``2 * nbytes`` hex digits (as ``secrets.token_hex``)."""
    global _buffer, _at
    with _lock:
        end = _at + nbytes
        if end > len(_buffer):
            _buffer, _at, end = os.urandom(max(REFILL_BYTES, nbytes)), 0, nbytes
        drawn = _buffer[_at:end]
        _at = end
    return drawn.hex()


def _forget() -> None:
    global _buffer, _at, _lock
    _buffer, _at, _lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_forget)
