"""Deltas between two snapshot layouts, and their wire form (sync.proto's ``SnapshotDelta``).

**Delta.** A list of splices per field (at index ``i`` of the base's records of that
field, remove ``n``, insert these records). A node rebuilds the full new payload from its
last-known-good layout and the delta and then verifies the envelope's signatures over
those full bytes, exactly as for a snapshot received whole: a delta is only a cheaper way
to carry the same bytes, never a different thing to trust. Any mismatch (another base, a
splice out of range, a record that is not one whole record of its field) raises
``DeltaMismatch``, and the node asks for the full snapshot instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from google.protobuf.message import DecodeError

from dataplane.snapshot.envelope import pae_prefix
from dataplane.snapshot.layout import (
    HEADER_FIELDS,
    REPEATED,
    Layout,
    LayoutError,
    read_varint,
    record_tag,
    varint,
)
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2

MAX_SPLICES = 100_000
"""Splices in one delta at most (a bigger change is sent whole)."""


class DeltaMismatch(ValueError):
    """A delta that does not apply to the base it is offered against; ask for the full snapshot."""


@dataclass(frozen=True, slots=True)
class Splice:
    """At ``index`` of the base's records of ``number``: remove ``remove``, insert ``insert``."""

    number: int
    index: int
    remove: int
    insert: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Changes:
    """The records a delta removed from and added to each field (for ``Compiled.advance``)."""

    removed: Mapping[int, Sequence[bytes]] = field(default_factory=dict)
    added: Mapping[int, Sequence[bytes]] = field(default_factory=dict)

    def touches(self, numbers: Iterable[int]) -> bool:
        return any(self.removed.get(n) or self.added.get(n) for n in numbers)


def diff(old: Layout, new: Layout) -> tuple[list[Splice], Changes]:
    """The splices that turn ``old``'s records into ``new``'s (headers are not compared)."""
    splices: list[Splice] = []
    removed: dict[int, list[bytes]] = {}
    added: dict[int, list[bytes]] = {}
    for number in REPEATED:
        a, b = old.records[number], new.records[number]
        if a is b or a == b:
            continue
        field_splices = _diff_field(number, a, b)
        splices += field_splices
        removed[number] = [r for s in field_splices for r in a[s.index : s.index + s.remove]]
        added[number] = [r for s in field_splices for r in s.insert]
    return splices, Changes(removed, added)


def _diff_field(number: int, a: Sequence[bytes], b: Sequence[bytes]) -> list[Splice]:
    # Common prefix and suffix first (one change: nothing else to look at), then a walk
    # over the middle. Records carry their entry's id, so equal records are the same entry
    # and keep their relative order; anything else is sent as one replacement.
    lo = 0
    top = min(len(a), len(b))
    while lo < top and a[lo] == b[lo]:
        lo += 1
    ha, hb = len(a), len(b)
    while ha > lo and hb > lo and a[ha - 1] == b[hb - 1]:
        ha -= 1
        hb -= 1
    mid_a, mid_b = a[lo:ha], b[lo:hb]
    in_a, in_b = set(mid_a), set(mid_b)
    splices: list[Splice] = []
    i = j = 0
    pending_at = -1
    pending_remove = 0
    pending_insert: list[bytes] = []

    def flush() -> None:
        nonlocal pending_at, pending_remove, pending_insert
        if pending_at >= 0:
            splices.append(Splice(number, lo + pending_at, pending_remove, tuple(pending_insert)))
        pending_at, pending_remove, pending_insert = -1, 0, []

    while i < len(mid_a) or j < len(mid_b):
        if i < len(mid_a) and j < len(mid_b) and mid_a[i] == mid_b[j]:
            flush()
            i += 1
            j += 1
            continue
        if pending_at < 0:
            pending_at = i
        if i < len(mid_a) and mid_a[i] not in in_b:
            pending_remove += 1
            i += 1
        elif j < len(mid_b) and mid_b[j] not in in_a:
            pending_insert.append(mid_b[j])
            j += 1
        else:
            # The same record moved: replace the rest of the middle in one splice.
            return [
                *splices,
                *(
                    [Splice(number, lo + pending_at, pending_remove, tuple(pending_insert))]
                    if pending_at >= 0 and pending_at < i
                    else []
                ),
                Splice(number, lo + i, len(mid_a) - i, tuple(mid_b[j:])),
            ]
    flush()
    return splices


def apply_splices(base: Layout, header: bytes, splices: Sequence[Splice]) -> tuple[Layout, Changes]:
    """``base`` with ``splices`` applied and ``header`` as its header; ``DeltaMismatch`` when
    a splice does not fit (the caller then asks for the full snapshot)."""
    if len(splices) > MAX_SPLICES:
        raise DeltaMismatch(f"{len(splices)} splices (at most {MAX_SPLICES})")
    by_field: dict[int, list[Splice]] = {}
    for s in splices:
        if s.number not in base.records:
            raise DeltaMismatch(f"splice of unknown field {s.number}")
        by_field.setdefault(s.number, []).append(s)
    records = dict(base.records)
    removed: dict[int, list[bytes]] = {}
    added: dict[int, list[bytes]] = {}
    size = base.length() - len(base.header) + len(header)
    sizes = dict(base.field_sizes) if base.field_sizes is not None else None
    for number, field_splices in by_field.items():
        old = base.records[number]
        out: list[bytes] = []
        at = 0
        gone: list[bytes] = []
        new: list[bytes] = []
        for s in field_splices:
            if s.index < at or s.remove < 0 or s.index + s.remove > len(old):
                raise DeltaMismatch(f"splice at {s.index} (-{s.remove}) does not fit field {number}")
            for r in s.insert:
                _check_record(number, r)
            out += old[at : s.index]
            gone += old[s.index : s.index + s.remove]
            out += s.insert
            new += s.insert
            at = s.index + s.remove
        out += old[at:]
        records[number] = out
        removed[number] = gone
        added[number] = new
        grown = sum(map(len, new)) - sum(map(len, gone))
        size += grown
        if sizes is not None:
            sizes[number] += grown
    _check_header(header)
    return Layout(header, records, size, None, sizes), Changes(removed, added)


def _check_record(number: int, rec: bytes) -> None:
    # Fields 16 and up (e.g. identities, 40) have a two-byte tag.
    tag = varint(record_tag(number))
    if not rec.startswith(tag):
        raise DeltaMismatch(f"a record of field {number} does not start with its tag")
    try:
        length, start = read_varint(rec, len(tag))
    except LayoutError as exc:
        raise DeltaMismatch(f"a record of field {number}: {exc}") from exc
    if start + length != len(rec):
        raise DeltaMismatch(f"a record of field {number} is not exactly one element")


def _check_header(header: bytes) -> None:
    offset = 0
    try:
        while offset < len(header):
            tag, after = read_varint(header, offset)
            if tag >> 3 not in HEADER_FIELDS:
                raise DeltaMismatch(f"header carries field {tag >> 3}")
            if tag & 7 == 0:
                _, offset = read_varint(header, after)
            elif tag & 7 == 2:
                length, start = read_varint(header, after)
                offset = start + length
            else:
                raise DeltaMismatch(f"header field {tag >> 3} has wire type {tag & 7}")
    except LayoutError as exc:
        raise DeltaMismatch(f"header: {exc}") from exc
    if offset != len(header):
        raise DeltaMismatch("header: last field runs past its end")


# ---- the wire form of a delta (sync.proto's SnapshotDelta) ------------------------------


def delta_message(
    base: tuple[int, bytes],
    layout: Layout,
    splices: Sequence[Splice],
    payload_sha256: bytes,
    envelope: snapshot_pb2.SignedEnvelope,
) -> sync_pb2.SnapshotDelta:
    """The delta from the snapshot ``base`` (version, payload hash) to ``layout``, signed as
    ``envelope`` (whose payload is left out: the node rebuilds it)."""
    message = sync_pb2.SnapshotDelta(
        base_version=base[0],
        base_sha256=base[1],
        header=layout.header,
        splices=[
            sync_pb2.Splice(field=s.number, index=s.index, remove=s.remove, insert=s.insert) for s in splices
        ],
        payload_sha256=payload_sha256,
    )
    message.envelope.CopyFrom(envelope)
    message.envelope.ClearField("payload")
    return message


def _stretches(base: Layout, header: bytes, splices: Sequence[Splice]) -> list[bytes | memoryview]:
    """The new payload as the unchanged stretches of ``base.source`` around the splices'
    records: a few large copies instead of one per record (joining 60,000 records holds
    the GIL for milliseconds; a node's event loop waits that long)."""
    assert base.source is not None
    assert base.field_sizes is not None
    source = memoryview(base.source)
    pieces: list[bytes | memoryview] = [header]
    cursor = field_start = len(base.header)
    by_field: dict[int, list[Splice]] = {}
    for s in splices:
        by_field.setdefault(s.number, []).append(s)
    for number in REPEATED:
        records = base.records[number]
        total = base.field_sizes[number]
        for s in by_field.get(number, ()):
            # Bytes before the splice, counted from the nearer end of the field.
            if s.index <= len(records) // 2:
                before = sum(map(len, records[: s.index]))
            else:
                before = total - sum(map(len, records[s.index :]))
            start = field_start + before
            pieces.append(source[cursor:start])
            pieces += s.insert
            cursor = start + sum(map(len, records[s.index : s.index + s.remove]))
        field_start += total
    pieces.append(source[cursor:])
    return pieces


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """A delta rebuilt on its base: the full payload, inside the exact bytes its signatures cover."""

    layout: Layout
    changes: Changes
    message: bytes
    """PAE(payload type, payload): what the envelope's signatures are checked against."""
    payload: memoryview
    """The full payload (a view into ``message``: rebuilding copies the megabytes once)."""
    digest: bytes
    version: int


def rebuild(base: Layout, delta: sync_pb2.SnapshotDelta) -> Rebuilt:
    """The full payload ``delta`` describes, rebuilt on ``base``; ``DeltaMismatch`` when it
    does not fit or the bytes are not those the delta's hash names."""
    splices = [Splice(s.field, s.index, s.remove, tuple(s.insert)) for s in delta.splices]
    layout, changes = apply_splices(base, bytes(delta.header), splices)
    prefix = pae_prefix(delta.envelope.payload_type, layout.length())
    if base.source is not None and base.field_sizes is not None:
        message = b"".join([prefix, *_stretches(base, layout.header, splices)])
    else:
        message = layout.joined(prefix)
    payload = memoryview(message)[len(prefix) :]
    layout = replace(layout, source=payload)
    digest = hashlib.sha256(payload).digest()
    if digest != delta.payload_sha256:
        raise DeltaMismatch("the rebuilt payload is not the one the delta names (hash differs)")
    try:
        version = snapshot_pb2.Snapshot.FromString(layout.header).version if layout.header else 0
    except DecodeError as exc:
        raise DeltaMismatch("the header does not decode") from exc
    return Rebuilt(layout, changes, message, payload, digest, version)
