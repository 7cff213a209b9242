"""Keys an operator hands over as base64 text (a file's content, a flag's value)."""

from __future__ import annotations

import base64
import binascii


def decode_base64_key(text: bytes | str, source: str, what: str, size: int = 32) -> bytes:
    """The ``size`` raw bytes ``text`` encodes; ``ValueError`` naming ``source`` (never the text)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{source}: must be base64 of {what}") from None
    if len(raw) != size:
        raise ValueError(f"{source}: must be {size} bytes, got {len(raw)}")
    return raw
