"""Pruned-range statements: what retention dropped of a chain, signed by the control plane.

Retention (``controlplane.evidence.retention``) drops old partitions of the evidence store and
leaves, per chain, a DSSE envelope (payload type ``PRUNED_PAYLOAD_TYPE``, PAE, Ed25519
signatures by the control plane's snapshot signing keys with their key ids, as snapshot
envelopes) over canonical JSON::

    {"chain_id", "first_seq", "last_seq", "last_hash" (hex),
     "compact_range": [{"height", "hash" (hex)}...],   # Merkle tree of records 1..last_seq
     "checkpoint": note or "",                         # the smallest stored matching
                                                       # checkpoint with size >= last_seq
     "pruned_before", "at"}                            # RFC 3339, UTC

Records ``first_seq..last_seq`` were dropped by that statement (an earlier one states the
records before ``first_seq``); ``compact_range`` is the roots of the perfect subtrees of
records ``1..last_seq``, tallest first, so the root of any later checkpoint is recomputed
from it and the remaining records. This module reads and checks statements and lives in the
data plane so ``signalbox evidence verify`` checks the statements a pack carries with the
data-plane install alone; every malformed field is a ``ValueError`` naming it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dataplane.evidence import merkle
from dataplane.evidence.pack import pae

PRUNED_PAYLOAD_TYPE = "application/vnd.signalbox.evidence-pruned.v1+json"
MAX_STATEMENT_BYTES = 64 * 1024
"""Far more than a statement holds (64 subtree roots at most); a longer one is refused unread."""

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class PrunedStatement:
    """A chain's pruned range as signed; ``envelope`` is what verifies."""

    chain_id: str
    first_seq: int
    last_seq: int
    last_hash: bytes
    compact_range: tuple[tuple[int, bytes], ...]
    """(height, root) of the perfect subtrees of records 1..last_seq, left to right."""
    checkpoint: str
    pruned_before: datetime
    at: datetime
    envelope: bytes
    """DSSE JSON envelope: ``payloadType``, base64 ``payload``, ``signatures`` [{keyid, sig}]."""

    def tree(self) -> merkle.Tree:
        """The Merkle tree of records 1..last_seq, ready to take the records after them."""
        return merkle.Tree.from_frontier(self.last_seq, [digest for _, digest in self.compact_range])


def _object(data: bytes | str, what: str) -> dict[str, Any]:
    if len(data) > MAX_STATEMENT_BYTES:
        raise ValueError(f"{what} is longer than {MAX_STATEMENT_BYTES} bytes")
    try:
        value = json.loads(data)
    except RecursionError as exc:
        # json.loads has no depth limit but the interpreter's stack; callers catch ValueError.
        raise ValueError(f"{what} is JSON nested too deep") from exc
    except ValueError as exc:
        raise ValueError(f"{what} is not JSON") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def _payload(outer: dict[str, Any]) -> bytes:
    payload = outer.get("payload")
    if not isinstance(payload, str):
        raise ValueError("payload must be base64 text")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise ValueError("payload is not standard base64") from exc


def _seq(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be an integer >= 1")
    return value


def _hash(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError(f"{name} must be 64 lowercase hex digits")
    return bytes.fromhex(value)


def _time(body: dict[str, Any], name: str) -> datetime:
    value = body.get(name)
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) and len(value) <= 40 else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ValueError(f"{name} must be an RFC 3339 time with a zone")
    return when


def decode_statement(envelope: bytes | str) -> PrunedStatement:
    """The fields of a statement envelope, each checked for form (its signatures are
    ``verify_statement``'s); ``ValueError`` naming the first malformed field."""
    outer = _object(envelope, "the statement")
    body = _object(_payload(outer), "the statement's payload")
    chain_id = body.get("chain_id")
    if not isinstance(chain_id, str) or not chain_id or len(chain_id) > 512:
        raise ValueError("chain_id must be a non-empty string")
    first, last = _seq(body, "first_seq"), _seq(body, "last_seq")
    if last < first:
        raise ValueError(f"last_seq {last} is before first_seq {first}")
    entries = body.get("compact_range")
    if not isinstance(entries, list) or len(entries) > 64:
        raise ValueError("compact_range must be a list of at most 64 subtree roots")
    compact: list[tuple[int, bytes]] = []
    for entry in entries:
        height = entry.get("height") if isinstance(entry, dict) else None
        if type(height) is not int or not 0 <= height < 64 or (compact and height >= compact[-1][0]):
            raise ValueError("compact_range heights must be integers 0..63, tallest first, distinct")
        compact.append((height, _hash(entry.get("hash"), "a compact_range hash")))
    if sum(1 << height for height, _ in compact) != last:
        raise ValueError(f"compact_range is not the subtrees of {last} records")
    note = body.get("checkpoint")
    if not isinstance(note, str):
        raise ValueError("checkpoint must be the note's text (or empty)")
    return PrunedStatement(
        chain_id=chain_id,
        first_seq=first,
        last_seq=last,
        last_hash=_hash(body.get("last_hash"), "last_hash"),
        compact_range=tuple(compact),
        checkpoint=note,
        pruned_before=_time(body, "pruned_before"),
        at=_time(body, "at"),
        envelope=envelope.encode() if isinstance(envelope, str) else envelope,
    )


def verify_statement(envelope: bytes | str, public_keys: Mapping[str, Ed25519PublicKey]) -> PrunedStatement:
    """The statement if one of its signatures verifies with ``public_keys`` (by key id);
    ``ValueError`` saying why not otherwise. Unknown key ids are ignored (the control plane
    signs with every key it holds; the verifier may trust only one)."""
    outer = _object(envelope, "the statement")
    if outer.get("payloadType") != PRUNED_PAYLOAD_TYPE:
        raise ValueError(f"payload type is not {PRUNED_PAYLOAD_TYPE}")
    message = pae(PRUNED_PAYLOAD_TYPE, _payload(outer))
    signatures = outer.get("signatures")
    for signature in signatures if isinstance(signatures, list) else ():
        if not isinstance(signature, dict):
            continue
        key = public_keys.get(str(signature.get("keyid", "")))
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(str(signature.get("sig", "")), validate=True), message)
        except (InvalidSignature, binascii.Error, ValueError):
            continue
        return decode_statement(envelope)
    raise ValueError("no signature by a trusted key verifies")
