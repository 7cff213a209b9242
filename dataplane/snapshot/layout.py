"""A snapshot payload as records, deltas between two of them, and compiling by difference.

Why: at fleet size (10,000 tenants, 50,000 API keys: a 7.9 MB payload) sending, checking
and compiling the whole snapshot for every admin change costs seconds across a fleet and
hundreds of ms per node. A change touches a few entries; this module lets both planes pay
for those entries only, while what is signed, sent and verified stays the FULL payload.

**Layout.** A ``Snapshot`` serialized deterministically is its singular fields 1-5
(version, created_at, expires_at, previous_hash, scope: the *header*) followed by its
repeated fields in field-number order, each element written as one *record*: a tag, a
length and the element's own deterministic encoding. A ``Layout`` is the header bytes and
each repeated field's records; ``payload()`` concatenates them back into exactly the
payload bytes. ``scan`` is the inverse, for a payload received whole.

**Delta.** A list of splices per field (at index ``i`` of the base's records of that
field, remove ``n``, insert these records). A node rebuilds the full new payload from its
last-known-good layout and the delta and then verifies the envelope's signatures over
those full bytes, exactly as for a snapshot received whole: a delta is only a cheaper way
to carry the same bytes, never a different thing to trust. Any mismatch (another base, a
splice out of range, a record that is not one whole record of its field) raises
``DeltaMismatch``, and the node asks for the full snapshot instead.

**Compiling by difference.** ``Compiled.advance`` compiles the new layout from the
previous compiled one and the records removed and added: tenants and API keys (nearly all
of a large snapshot) are updated entry by entry; providers, models and policies are
recompiled with ``compile_registry`` only when one of their records, or a tenant a policy
could name, changed. The result equals ``compile_payload(layout.payload())``: every case
the difference cannot decide on its own (a duplicate, a dangling reference, a removed
tenant still referenced) is handed to the full compiler, which then raises the same
``SnapshotInvalid`` with the same path (tests/dataplane/test_layout.py checks the
equality on random edit sequences). Iteration order of ``tenants`` and ``api_keys`` is not
part of the result (they are looked up, never listed).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from google.protobuf.message import DecodeError

from dataplane.config.model import ApiKeyEntry, RuntimeConfig, TenantConfig
from dataplane.errors import SnapshotInvalid
from dataplane.scopes import KeyScope
from dataplane.snapshot.compile import (
    check_header,
    compile_payload,
    compile_registry,
    key_entry,
    runtime_config,
    tenant_entry,
)
from dataplane.snapshot.envelope import pae_prefix
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2

TENANTS, API_KEYS, PROVIDERS, MODELS, POLICIES, TRUSTED_KEYS = 10, 11, 12, 13, 14, 15
REPEATED = (TENANTS, API_KEYS, PROVIDERS, MODELS, POLICIES, TRUSTED_KEYS)
"""The repeated fields of ``Snapshot``, in the order a deterministic encoding writes them."""
HEADER_FIELDS = frozenset({1, 2, 3, 4, 5})
REGISTRY = (PROVIDERS, MODELS, POLICIES)
"""Fields recompiled together (policies depend on models, models on providers)."""
MAX_SPLICES = 100_000
"""Splices in one delta at most (a bigger change is sent whole)."""


class LayoutError(ValueError):
    """A payload that is not a deterministic ``Snapshot`` encoding this module knows."""


class DeltaMismatch(ValueError):
    """A delta that does not apply to the base it is offered against; ask for the full snapshot."""


def _record_tag(number: int) -> int:
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
    return varint(_record_tag(number)) + varint(len(element)) + element


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
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
        tag, after = _read_varint(header, offset)
        if tag == _record_tag(5):
            return header[offset:]
        wire = tag & 7
        if wire == 0:
            _, offset = _read_varint(header, after)
        elif wire == 2:
            length, start = _read_varint(header, after)
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
    read = _read_varint
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


# ---- deltas ----------------------------------------------------------------------------


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
    if not rec or rec[0] != _record_tag(number):
        raise DeltaMismatch(f"a record of field {number} does not start with its tag")
    try:
        length, start = _read_varint(rec, 1)
    except LayoutError as exc:
        raise DeltaMismatch(f"a record of field {number}: {exc}") from exc
    if start + length != len(rec):
        raise DeltaMismatch(f"a record of field {number} is not exactly one element")


def _check_header(header: bytes) -> None:
    offset = 0
    try:
        while offset < len(header):
            tag, after = _read_varint(header, offset)
            if tag >> 3 not in HEADER_FIELDS:
                raise DeltaMismatch(f"header carries field {tag >> 3}")
            if tag & 7 == 0:
                _, offset = _read_varint(header, after)
            elif tag & 7 == 2:
                length, start = _read_varint(header, after)
                offset = start + length
            else:
                raise DeltaMismatch(f"header field {tag >> 3} has wire type {tag & 7}")
    except LayoutError as exc:
        raise DeltaMismatch(f"header: {exc}") from exc
    if offset != len(header):
        raise DeltaMismatch("header: last field runs past its end")


# ---- compiling by difference -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled snapshot with its layout and what compiling the next one by difference needs."""

    layout: Layout
    config: RuntimeConfig
    key_tenants: Counter[str]
    """How many API keys name each tenant (a tenant removed while named is an error)."""
    scopes: Mapping[frozenset[str], KeyScope]

    @property
    def shadowed_keys(self) -> bool:
        """Whether two key records share a secret hash (the later one is served): removing
        either, or a tenant only the hidden one names, is then decided by the full compiler."""
        return len(self.layout.records[API_KEYS]) != len(self.config.api_keys)

    @classmethod
    def full(cls, layout: Layout, payload: bytes | None = None) -> Compiled:
        """Compile ``layout`` whole (``payload``: its bytes, when the caller has them)."""
        config = compile_payload(layout.payload() if payload is None else payload)
        counts = Counter(entry.tenant_id for entry in config.api_keys.values())
        scopes = {entry.scopes: entry.scope for entry in config.api_keys.values()}
        return cls(layout, config, counts, scopes)

    def advance(
        self, layout: Layout, changes: Changes, payload: bytes | memoryview, payload_sha256: bytes
    ) -> Compiled:
        """Compile ``layout`` (whose bytes are ``payload``), reached from this one by ``changes``.

        Equal to ``Compiled.full(layout)``; raises the same ``SnapshotInvalid``."""
        try:
            return self._advance(layout, changes, payload_sha256)
        except _Undecided:
            return Compiled.full(layout, bytes(payload))

    def _advance(self, layout: Layout, changes: Changes, payload_sha256: bytes) -> Compiled:
        header = _parse(snapshot_pb2.Snapshot, layout.header)
        try:
            check_header(header)
        except SnapshotInvalid as exc:
            raise _Undecided from exc
        old = self.config
        if self.shadowed_keys and changes.touches((TENANTS, API_KEYS)):
            raise _Undecided
        tenants: Mapping[str, TenantConfig] = old.tenants
        gone_tenants: set[str] = set()
        if changes.touches((TENANTS,)):
            table = dict(old.tenants)
            for rec in changes.removed.get(TENANTS, ()):
                t = _element(snapshot_pb2.Tenant, rec)
                if table.pop(t.id, None) is None:
                    raise _Undecided
                gone_tenants.add(t.id)
            for rec in changes.added.get(TENANTS, ()):
                t = _element(snapshot_pb2.Tenant, rec)
                if t.id in table or not t.id:
                    raise _Undecided
                try:
                    table[t.id] = tenant_entry(0, t)
                except SnapshotInvalid as exc:
                    # Its index in the payload is the full compiler's to name.
                    raise _Undecided from exc
                gone_tenants.discard(t.id)
            tenants = table

        keys: Mapping[bytes, ApiKeyEntry] = old.api_keys
        counts = self.key_tenants
        scopes = self.scopes
        if changes.touches((API_KEYS,)) or gone_tenants:
            key_table = dict(old.api_keys)
            counts = Counter(counts)
            parsed = dict(scopes)
            for rec in changes.removed.get(API_KEYS, ()):
                k = _element(snapshot_pb2.ApiKey, rec)
                entry = key_table.get(bytes(k.secret_sha256))
                if entry is None or entry.id != k.id:
                    raise _Undecided  # two keys with one hash: the full compile decides
                del key_table[bytes(k.secret_sha256)]
                counts[entry.tenant_id] -= 1
            for rec in changes.added.get(API_KEYS, ()):
                k = _element(snapshot_pb2.ApiKey, rec)
                if bytes(k.secret_sha256) in key_table:
                    raise _Undecided
                try:
                    secret, entry = key_entry(0, k, tenants, parsed)
                except SnapshotInvalid as exc:
                    raise _Undecided from exc
                key_table[secret] = entry
                counts[entry.tenant_id] += 1
            if any(counts[t] > 0 for t in gone_tenants):
                raise _Undecided  # a key names a tenant that is gone
            keys, scopes = key_table, parsed

        providers, models, policies = old.providers, old.models, old.policies
        if changes.touches(REGISTRY) or any(t in policies for t in gone_tenants):
            registry = snapshot_pb2.Snapshot()
            try:
                registry.ParseFromString(
                    b"".join(itertools.chain.from_iterable(layout.records[n] for n in REGISTRY))
                )
                providers, models, policies = compile_registry(registry, tenants)
            except (DecodeError, SnapshotInvalid) as exc:
                raise _Undecided from exc
        config = runtime_config(header, payload_sha256, tenants, keys, providers, models, policies)
        return Compiled(layout, config, counts, scopes)


class _Undecided(Exception):
    """The difference alone cannot say: compile the whole payload."""


_M = TypeVar("_M", snapshot_pb2.Snapshot, snapshot_pb2.Tenant, snapshot_pb2.ApiKey)


def _parse(kind: type[_M], data: bytes) -> _M:
    message = kind()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise _Undecided from exc
    return message


def _element(kind: type[_M], rec: bytes) -> _M:
    """The element a record carries (after its tag and length)."""
    try:
        _, start = _read_varint(rec, 1)
    except LayoutError as exc:
        raise _Undecided from exc
    return _parse(kind, rec[start:])


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
        version = _parse(snapshot_pb2.Snapshot, layout.header).version if layout.header else 0
    except _Undecided as exc:
        raise DeltaMismatch("the header does not decode") from exc
    return Rebuilt(layout, changes, message, payload, digest, version)
