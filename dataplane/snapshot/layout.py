"""A snapshot payload as records: its layout, and the scan of a payload received whole.

Why: at fleet size (10,000 tenants, 50,000 API keys: a 7.9 MB payload) sending, checking
and compiling the whole snapshot for every admin change costs seconds across a fleet and
hundreds of ms per node. A change touches a few entries; the layout lets both planes pay
for those entries only (``dataplane.snapshot.delta`` carries them between two layouts,
``dataplane.snapshot.compiled`` compiles them), while what is signed, sent and verified
stays the FULL payload.

**Layout.** A ``Snapshot`` serialized deterministically is its singular fields 1-5
(version, created_at, expires_at, previous_hash, scope: the *header*) followed by its
repeated fields in field-number order, each element written as one *record*: a tag, a
length and the element's own deterministic encoding. A ``Layout`` is the header bytes and
each repeated field's records; ``payload()`` concatenates them back into exactly the
payload bytes. ``scan`` is the inverse, for a payload received whole.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from signalbox.api.config.v1 import snapshot_pb2

TENANTS, API_KEYS, PROVIDERS, MODELS, POLICIES, TRUSTED_KEYS = 10, 11, 12, 13, 14, 15
IDENTITIES = 40
GOVERNANCE_PROFILES = 41
REPEATED = (TENANTS, API_KEYS, PROVIDERS, MODELS, POLICIES, TRUSTED_KEYS, IDENTITIES, GOVERNANCE_PROFILES)
"""The repeated fields of ``Snapshot``, in the order a deterministic encoding writes them."""
HEADER_FIELDS = frozenset({1, 2, 3, 4, 5})
REGISTRY = (PROVIDERS, MODELS, POLICIES)
"""Fields recompiled together (policies depend on models, models on providers)."""


class LayoutError(ValueError):
    """A payload that is not a deterministic ``Snapshot`` encoding this module knows."""


def record_tag(number: int) -> int:
    return (number << 3) | 2


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def record(number: int, element: bytes) -> bytes:
    """The record of one element of repeated field ``number``."""
    return varint(record_tag(number)) + varint(len(element)) + element


def read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    shift = 0
    end = len(data)
    while offset < end and shift < 64:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7
    raise LayoutError(f"truncated or overlong varint at byte {offset}")


@dataclass(frozen=True, slots=True)
class Layout:
    """A payload as its header bytes and each repeated field's records (never mutated)."""

    header: bytes
    records: Mapping[int, Sequence[bytes]]
    """Every number of ``REPEATED``, each with its records in payload order."""
    size: int = -1
    """The payload's length in bytes (-1: not known yet, ``length`` counts it)."""
    source: bytes | memoryview | None = None
    """The payload's bytes, when this layout was read from or rebuilt into them: a delta on
    it then copies the unchanged stretches whole instead of joining every record."""
    field_sizes: Mapping[int, int] | None = None
    """Bytes of each repeated field's records (with ``source``)."""

    def payload(self) -> bytes:
        return self.header + b"".join(itertools.chain.from_iterable(self.records[n] for n in REPEATED))

    def length(self) -> int:
        if self.size >= 0:
            return self.size
        return len(self.header) + sum(sum(map(len, self.records[n])) for n in REPEATED)

    def joined(self, prefix: bytes) -> bytes:
        """``prefix`` followed by the payload, built in one copy (e.g. the PAE a signature covers)."""
        parts = [prefix, self.header]
        for n in REPEATED:
            parts += self.records[n]
        return b"".join(parts)

    def body_equals(self, other: Layout) -> bool:
        """Whether both carry the same config: same records, same header apart from
        fields 1-4 (which every re-issue changes); compares scope by its encoding."""
        if _scope_of(self.header) != _scope_of(other.header):
            return False
        return all(self.records[n] == other.records[n] for n in REPEATED)


def _scope_of(header: bytes) -> bytes:
    """The scope record (field 5) of a header, or b"" (it is written last in a header)."""
    offset = 0
    while offset < len(header):
        tag, after = read_varint(header, offset)
        if tag == record_tag(5):
            return header[offset:]
        wire = tag & 7
        if wire == 0:
            _, offset = read_varint(header, after)
        elif wire == 2:
            length, start = read_varint(header, after)
            offset = start + length
        else:
            raise LayoutError(f"unexpected wire type {wire} in the header")
    return b""


def make_layout(header: snapshot_pb2.Snapshot, records: Mapping[int, Sequence[bytes]]) -> Layout:
    """A layout from a message carrying only header fields and the records of each field."""
    if any(f.number not in HEADER_FIELDS for f, _ in header.ListFields()):
        raise LayoutError("the header message carries fields other than 1-5")
    return Layout(
        header.SerializeToString(deterministic=True), {n: list(records.get(n, ())) for n in REPEATED}
    )


def scan(payload: bytes) -> Layout:
    """The layout of a payload received whole; ``LayoutError`` unless it is laid out as a
    deterministic encoding is (header fields first, then repeated fields in order)."""
    data = bytes(payload)
    offset = 0
    end = len(data)
    header_end = 0
    records: dict[int, list[bytes]] = {n: [] for n in REPEATED}
    current = 0
    current_list: list[bytes] = []
    sizes = dict.fromkeys(REPEATED, 0)
    field_start = 0
    read = read_varint
    while offset < end:
        start = offset
        tag = data[offset]
        if tag < 0x80:
            offset += 1
        else:
            tag, offset = read(data, offset)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            length = data[offset] if offset < end else 0x80
            if length < 0x80:
                offset += 1
            else:
                length, offset = read(data, offset)
            offset += length
            if offset > end:
                raise LayoutError(f"field {number} at byte {start} runs past the end of the payload")
        elif wire == 0:
            _, offset = read(data, offset)
        else:
            raise LayoutError(f"field {number} at byte {start} has wire type {wire}")
        if number in HEADER_FIELDS:
            if current:
                raise LayoutError(f"header field {number} at byte {start} after a repeated field")
            header_end = offset
            continue
        if number not in records or wire != 2:
            raise LayoutError(f"unknown field {number} at byte {start}")
        if number != current:
            if number < current:
                raise LayoutError(f"field {number} at byte {start} after field {current}")
            if current:
                sizes[current] = start - field_start
            current = number
            current_list = records[number]
            field_start = start
        current_list.append(data[start:offset])
    if current:
        sizes[current] = end - field_start
    return Layout(data[:header_end], records, len(data), data, sizes)
