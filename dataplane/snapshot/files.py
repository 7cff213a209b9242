"""Snapshot files on disk: reading an envelope file, private directories, atomic writes."""

from __future__ import annotations

import asyncio
import os
from contextlib import suppress
from pathlib import Path

from google.protobuf.message import DecodeError

from dataplane.errors import SnapshotFileInvalid
from signalbox.api.config.v1 import snapshot_pb2


async def read_envelope_file(path: Path) -> tuple[bytes, snapshot_pb2.SignedEnvelope]:
    """The raw bytes and parsed envelope of a snapshot file; ``SnapshotFileInvalid`` if unreadable."""
    try:
        raw = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise SnapshotFileInvalid(f"{path}: cannot be read: {exc}") from exc
    envelope = snapshot_pb2.SignedEnvelope()
    try:
        envelope.ParseFromString(raw)
    except DecodeError as exc:
        raise SnapshotFileInvalid(f"{path}: not a signed envelope: {exc}") from exc
    return raw, envelope


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed; the directory itself is 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def envelope_parts(
    envelope: snapshot_pb2.SignedEnvelope, payload: bytes | memoryview
) -> list[bytes | memoryview]:
    """The serialized ``envelope`` with ``payload`` as its payload, in pieces (concatenated,
    exactly ``SerializeToString`` of that envelope: fields in number order, payload second)."""
    head = snapshot_pb2.SignedEnvelope(payload_type=envelope.payload_type).SerializeToString()
    rest = snapshot_pb2.SignedEnvelope(signatures=envelope.signatures, trust_chain=envelope.trust_chain)
    tag = b"\x12" + _varint(len(payload)) if len(payload) else b""
    return [head, tag, payload, rest.SerializeToString()]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def atomic_write(path: Path, *parts: bytes | memoryview) -> None:
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
