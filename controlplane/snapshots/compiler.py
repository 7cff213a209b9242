"""The control plane's one door to the data plane's snapshot code.

Every use of the node's compiler and envelope format goes through here, so the
control plane checks candidates exactly as nodes do, and the data plane's
modules can move with one import to change.

Compiling is CPU-heavy and pure, so it runs in a worker thread: a large
snapshot never stalls the event loop that serves admin calls and sync streams.
"""

from __future__ import annotations

import asyncio

from dataplane.config.compile import SnapshotInvalid, compile_payload
from dataplane.config.envelope import SNAPSHOT_PAYLOAD_TYPE, key_id_for, pae
from dataplane.config.model import RuntimeConfig

__all__ = [
    "SNAPSHOT_PAYLOAD_TYPE",
    "SnapshotInvalid",
    "compile_in_thread",
    "compile_now",
    "key_id_for",
    "pae",
]


def compile_now(payload: bytes) -> RuntimeConfig:
    """Compile the exact payload bytes as a node would, in the calling thread.

    For code already off the event loop; on the loop, await ``compile_in_thread``.
    """
    return compile_payload(payload)


async def compile_in_thread(payload: bytes) -> RuntimeConfig:
    """Compile the exact payload bytes as a node would, in a worker thread."""
    return await asyncio.to_thread(compile_now, payload)
