"""The bytes of an evidence record: how a record is encoded, sealed with its hash and read
back from a chain's files. The writer is ``dataplane.evidence.log``.

**Records.** One JSON object per line (UTF-8, ``\\n``-terminated). Every record carries

- ``record_id``: 32 lowercase hex characters, random, unique;
- ``chain_id``: ``<node_id>/<worker>``; ``node_id``: the node's id;
- ``seq``: 1, 2, 3, ... without gaps within a chain;
- ``prev_hash``: the ``hash`` of record ``seq - 1`` (``GENESIS_HASH``, 64 zeros, for seq 1);
- the request's fields (``dataplane.pipeline.trace.record_fields``);
- ``hash``: lowercase hex SHA-256 over the stored line's own bytes without the ``hash``
  member, which is always the line's last member: a line is ``B[:-1] + ',"hash":"' + H +
  '"}' + '\\n'`` where ``B`` is the hashed JSON object and ``H = hex(SHA-256(B))``
  (``hash_of_line``). The node writes ``B`` as canonical JSON (keys sorted, separators
  ``,`` and ``:``, no whitespace, non-ASCII characters as UTF-8; ``encode_record``, the
  bytes of ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
  for the values records hold; ``seal``), so ``H`` is also the hash of the record's
  canonical form (``record_hash``); verifiers hash the bytes
  as they are and never re-encode, which is what makes checking a large range fast and
  makes any changed byte a changed hash. A line whose last member is not ``hash`` is not
  a record.

Changing, removing, inserting or reordering any record breaks the chain, which
``verify_chain`` (and ``dataplane.evidence.proofs.verify_chain_files``) detects and names.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import segments

GENESIS_HASH = "0" * 64
"""``prev_hash`` of a chain's first record."""

HASH_MEMBER_START = b',"hash":"'
HASH_MEMBER_BYTES = len(HASH_MEMBER_START) + 64 + 2  # ,"hash":"<64 hex>"}
_HEX64 = re.compile(rb"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ChainHead:
    seq: int
    hash: str


def canonical(value: Any) -> bytes:
    """The canonical JSON of ``value``: what a record's hash is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_record(record: Mapping[str, Any]) -> bytes:
    """The hashed body of a record line: canonical JSON as ``canonical`` defines it, written
    by orjson (~1 us for a 1.2 KB record here, against ~15 us for ``json.dumps``: this runs
    on every request). orjson writes the same bytes for the values records hold (keys
    sorted by code point, compact separators, UTF-8, shortest round-trip floats); where the
    two differ (an exponent's ``+``, NaN, which orjson writes as JSON's ``null``) verifiers do
    not care, as they hash the bytes as they are. What orjson refuses (integers beyond 64
    bits, non-string keys) falls back to ``json.dumps`` without NaN."""
    try:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(
            record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()


def stored_line(body: bytes, digest: str) -> bytes:
    """The stored line of the canonical ``body`` whose SHA-256 (hex) is ``digest``."""
    return b'%b,"hash":"%b"}\n' % (body[:-1], digest.encode())


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``record`` without its ``hash`` field: the hash
    ``seal`` gives it."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(encode_record(body)).hexdigest()


def seal(record: Mapping[str, Any]) -> bytes:
    """The stored line of ``record`` (its ``hash`` field, if any, replaced): canonical JSON
    with the hash member appended last, newline-terminated."""
    body = encode_record({k: v for k, v in record.items() if k != "hash"})
    return stored_line(body, hashlib.sha256(body).hexdigest())


def hash_of_line(line: bytes) -> str | None:
    """The SHA-256 (hex) of a stored record line's bytes without its ``hash`` member, which
    must be its last member; None when it is not (not a record line). A line that verifies
    has ``hash_of_line(line) == json.loads(line)["hash"]``."""
    end = len(line) - 1 if line.endswith(b"\n") else len(line)
    start = end - HASH_MEMBER_BYTES
    if (
        start < 1
        or not line.startswith(HASH_MEMBER_START, start)
        or not line.startswith(b'"}', end - 2)
        or _HEX64.fullmatch(line, start + len(HASH_MEMBER_START), end - 2) is None
    ):
        return None
    return hashlib.sha256(line[:start] + b"}").hexdigest()


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of the chain whose first segment is ``path`` (what remains
    after pruning), in order."""
    for segment, n, line in _lines(path):
        # A JSON object or EvidenceChainBroken naming the line: callers (the data dir's
        # verifier) read a record's members, and a file on disk can hold anything.
        yield segments.json_object(line, where(segment, n))


def _lines(path: Path) -> Iterator[tuple[segments.Segment, int, bytes]]:
    """(segment, line number in it, line) of every complete line of the remaining segments."""
    base = segments.read_base(path)
    for segment in segments.live_segments(path, base.seq if base else 0):
        with open(segment.path, "rb") as f:
            for n, line in enumerate(f, start=1):
                if line.endswith(b"\n"):
                    yield segment, n, line


def where(segment: segments.Segment, line: int) -> str:
    """``line L`` in the chain file, ``line L of <segment file>`` in a later segment."""
    return f"line {line}" if segment.start == 1 else f"line {line} of {segment.path.name}"


def verify_chain(path: Path) -> ChainHead:
    """Check sequence, links and hashes of the whole chain (from its base, when pruned);
    return its head."""
    base = segments.read_base(path)
    head = ChainHead(base.seq, base.hash) if base else ChainHead(0, GENESIS_HASH)
    for segment, n, line in _lines(path):
        record = segments.json_object(line, where(segment, n))  # not JSON: named, not a JSONDecodeError
        if record.get("seq") != head.seq + 1:
            raise EvidenceChainBroken(f"{where(segment, n)}: seq {record.get('seq')} follows {head.seq}")
        if record.get("prev_hash") != head.hash:
            raise EvidenceChainBroken(f"{where(segment, n)}: prev_hash does not match the record before")
        if hash_of_line(line) != record.get("hash"):
            raise EvidenceChainBroken(f"{where(segment, n)}: hash does not match the record's content")
        head = ChainHead(record["seq"], record["hash"])
    return head
