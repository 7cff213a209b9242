"""The control plane's one door to the data plane's snapshot code.

Every use of the node's compiler and envelope format goes through here, so the
control plane checks candidates exactly as nodes do, and the data plane's
modules can move with one import to change.

Compiling is CPU-heavy and pure, so it runs in a worker thread: a large
snapshot never stalls the event loop that serves admin calls and sync streams.
``LatestCompiled`` keeps the compiled config of the newest version, so dry runs
(ExplainRoute) compile a version once, not once per call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from controlplane.errors import StoredSnapshotInvalid
from dataplane.config.model import RuntimeConfig
from dataplane.errors import SnapshotInvalid
from dataplane.snapshot.compile import compile_payload
from dataplane.snapshot.envelope import SNAPSHOT_PAYLOAD_TYPE, key_id_for, pae

__all__ = [
    "SNAPSHOT_PAYLOAD_TYPE",
    "LatestCompiled",
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


@dataclass(frozen=True, slots=True)
class _Entry:
    version: int
    sha256: bytes
    config: RuntimeConfig


@dataclass(slots=True)
class LatestCompiled:
    """The compiled config of the newest snapshot version seen, keyed by version and payload hash.

    The hash is part of the key because a version number alone does not name a
    payload: after a database reset or restore, numbers start again with other content.
    """

    _entry: _Entry | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def remember(self, version: int, sha256: bytes, config: RuntimeConfig) -> None:
        """Keep ``config`` as the compiled form of that version, unless a newer one is held."""
        if self._entry is None or version >= self._entry.version:
            self._entry = _Entry(version, bytes(sha256), config)

    def held(self, version: int, sha256: bytes) -> RuntimeConfig | None:
        """The compiled config of that stored version if it is the one held, else None."""
        return self._held(version, bytes(sha256))

    def _held(self, version: int, sha256: bytes) -> RuntimeConfig | None:
        entry = self._entry
        if entry is not None and entry.version == version and entry.sha256 == sha256:
            return entry.config
        return None

    async def get(self, version: int, sha256: bytes, payload: bytes) -> RuntimeConfig:
        """The compiled ``payload`` of that stored version: held, or compiled (once) in a worker
        thread; ``StoredSnapshotInvalid`` if this build's data-plane code cannot compile it."""
        sha256 = bytes(sha256)
        if (config := self._held(version, sha256)) is not None:
            return config
        # Concurrent callers asking for the same new version wait for one compile.
        async with self._lock:
            if (config := self._held(version, sha256)) is not None:
                return config
            try:
                config = await compile_in_thread(payload)
            except SnapshotInvalid as exc:
                raise StoredSnapshotInvalid(exc.path, exc.problem) from exc
            # What was asked for is the newest stored version: hold it even over a
            # higher number (a database reset starts versions again).
            self._entry = _Entry(version, sha256, config)
            return config
