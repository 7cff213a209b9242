"""Snapshot files on disk: reading an envelope file (private directories and atomic writes
are ``dataplane.files``, re-exported here for the snapshot modules)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from google.protobuf.message import DecodeError

from dataplane.errors import SnapshotFileInvalid
from dataplane.files import atomic_write, private_dir, read_regular
from signalbox.api.config.v1 import snapshot_pb2

__all__ = [
    "MAX_ENVELOPE_FILE_BYTES",
    "atomic_write",
    "envelope_parts",
    "private_dir",
    "read_envelope_file",
    "read_regular",
]

MAX_ENVELOPE_FILE_BYTES = 256 * 1024 * 1024
"""A larger snapshot file is not read (a snapshot of 10,000 tenants is a few MiB)."""


async def read_envelope_file(path: Path) -> tuple[bytes, snapshot_pb2.SignedEnvelope]:
    """The raw bytes and parsed envelope of a snapshot file; ``SnapshotFileInvalid`` if unreadable."""
    try:
        raw = await asyncio.to_thread(_read_bounded, path)
    except OSError as exc:
        raise SnapshotFileInvalid(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    envelope = snapshot_pb2.SignedEnvelope()
    try:
        envelope.ParseFromString(raw)
    except DecodeError as exc:
        raise SnapshotFileInvalid(f"{path}: not a signed envelope: {exc}") from exc
    return raw, envelope


def _read_bounded(path: Path) -> bytes:
    """A regular file of at most ``MAX_ENVELOPE_FILE_BYTES``; ``OSError`` otherwise: a pin (or
    last-known-good) replaced by a FIFO would make start wait for a writer forever, and one
    of gigabytes fill the memory, where the node must refuse to start instead (as the pin
    watcher refuses both while running)."""
    return read_regular(path, MAX_ENVELOPE_FILE_BYTES)


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
