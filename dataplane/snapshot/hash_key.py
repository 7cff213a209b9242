"""The API-key hash key on a node: its live versions, where they are kept and the file an
operator gives an air-gapped node (``--api-key-hash-key-file``, written by ``signalbox
controlplane export-api-key-hash-key``). Why nodes hold it and how versions come and go:
``controlplane.api_key_hash``.

One format for the node's own copy and the operator's file, JSON::

    {"api_key_hash_keys": [{"version": 1, "key": "<base64 of 32 bytes>"}, ...]}

Files of earlier versions still read, as version 1: the node's copy (the 32 raw bytes) and
the operator's file (base64 of the 32 bytes).
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from dataplane.files import read_regular
from dataplane.keyfile import decode_base64_key

API_KEY_HASH_KEY_FILE: Final = "api-key-hash-key"
"""Under the node's snapshot dir: the versions the control plane sent last (0600)."""
API_KEY_HASH_KEY_BYTES: Final = 32
MAX_HASH_KEY_VERSIONS: Final = 8
"""Versions a node takes at most (the control plane keeps fewer live): each one costs an
HMAC per API-key check."""
MAX_FILE_BYTES: Final = 4096
_FIELD: Final = "api_key_hash_keys"


@dataclass(frozen=True, slots=True)
class HashKeys:
    """Live versions of the API-key hash key: version -> 32-byte key. Never shown."""

    by_version: Mapping[int, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.by_version) > MAX_HASH_KEY_VERSIONS:
            raise ValueError(f"{len(self.by_version)} versions, at most {MAX_HASH_KEY_VERSIONS}")
        for version, key in self.by_version.items():
            if not 1 <= version < 2**32:
                raise ValueError(f"version {version}: must be 1..{2**32 - 1}")
            if len(key) != API_KEY_HASH_KEY_BYTES:
                raise ValueError(f"version {version}: {len(key)} bytes, expected {API_KEY_HASH_KEY_BYTES}")

    @classmethod
    def of(cls, pairs: Iterable[tuple[int, bytes]]) -> HashKeys:
        """From (version, key) pairs; ``ValueError`` for a repeated version or a bad key."""
        by_version: dict[int, bytes] = {}
        for version, key in pairs:
            if version in by_version:
                raise ValueError(f"version {version}: given twice")
            by_version[version] = bytes(key)
        return cls(by_version)

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self.by_version))

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The keys, oldest version first: what a node computes a presented key's HMAC under."""
        return tuple(self.by_version[v] for v in self.versions)

    def encode(self) -> bytes:
        entries = [
            {"version": v, "key": base64.b64encode(self.by_version[v]).decode()} for v in self.versions
        ]
        return json.dumps({_FIELD: entries}, indent=1).encode() + b"\n"


NO_HASH_KEYS: Final = HashKeys()


def decode_hash_keys(raw: bytes, source: str) -> HashKeys:
    """The versions in a file of either format; ``ValueError`` naming ``source`` and the rule
    broken (never a key)."""
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"{source}: {len(raw)} bytes, more than {MAX_FILE_BYTES}")
    if len(raw) == API_KEY_HASH_KEY_BYTES:
        return HashKeys({1: raw})  # a node's copy written by an earlier version
    if not raw.lstrip().startswith(b"{"):
        # An operator's file of an earlier version: base64 of the one key there was.
        return HashKeys({1: decode_base64_key(raw, source, f"{API_KEY_HASH_KEY_BYTES} bytes")})
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        # RecursionError: 4096 bytes nest past the parser's depth limit, which is no ValueError.
        raise ValueError(f"{source}: not JSON (expected {{{_FIELD!r}: [...]}})") from None
    entries = document.get(_FIELD) if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: {_FIELD}: must be a non-empty list")
    pairs = []
    for i, entry in enumerate(entries):
        where = f"{source}: {_FIELD}[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"version", "key"}:
            raise ValueError(f"{where}: must be an object with exactly version and key")
        version, text = entry["version"], entry["key"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"{where}.version: must be a whole number")
        if not isinstance(text, str):
            raise ValueError(f"{where}.key: must be base64 text")
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}.key: must be base64 of {API_KEY_HASH_KEY_BYTES} bytes") from None
        pairs.append((version, key))
    try:
        return HashKeys.of(pairs)
    except ValueError as exc:
        raise ValueError(f"{source}: {_FIELD}: {exc}") from None


def read_hash_key_file(path: Path) -> bytes:
    """The bytes of a hash key file: ``OSError`` if it cannot be read or is not a regular
    file (a FIFO cannot hang start), ``ValueError`` if larger than ``MAX_FILE_BYTES`` (as
    ``decode_hash_keys`` refuses a larger text)."""
    try:
        return read_regular(path, MAX_FILE_BYTES)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise ValueError(f"{path}: more than {MAX_FILE_BYTES} bytes") from None
        raise


def write_hash_key_file(path: Path, keys: HashKeys) -> None:
    """Write ``keys`` for an operator to ``path``, which must not exist (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(keys.encode())
