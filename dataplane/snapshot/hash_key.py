"""The API-key hash key on a node: where it is kept and the file an operator gives an
air-gapped node (``--api-key-hash-key-file``, written by ``signalbox controlplane
export-api-key-hash-key``). Why nodes hold it: ``controlplane.api_key_hash``."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Final

from dataplane.keyfile import decode_base64_key

API_KEY_HASH_KEY_FILE: Final = "api-key-hash-key"
"""Under the node's snapshot dir: the key the control plane sent last (raw bytes, 0600)."""
API_KEY_HASH_KEY_BYTES: Final = 32


def decode_hash_key_file(raw: bytes, source: str) -> bytes:
    """The key from an operator's file (base64 of 32 bytes); ``ValueError`` naming ``source``."""
    return decode_base64_key(raw, source, f"{API_KEY_HASH_KEY_BYTES} bytes", API_KEY_HASH_KEY_BYTES)


def write_hash_key_file(path: Path, key: bytes) -> None:
    """Write ``key`` for an operator as base64 to ``path``, which must not exist (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(key) + b"\n")
