"""The body of every group's snapshot (fields 10..14) as pre-encoded records, read from the
database re-encoding only the rows that changed since the previous read.

A ``Snapshot`` serialized deterministically writes each element of a repeated message field
as one *record*: the tag varint ``(field << 3) | 2``, the length varint, then the element's
own deterministic encoding. The body of a payload is therefore the concatenation of its
records in field order, and a group's body is a selection of the full body's records (a
model whose deployments are trimmed is re-assembled from its own pieces, never re-encoded).
``RowCache.read`` produces every record once per row version; ``cut`` selects per group with
the rules of ``scope.scope_snapshot`` and touches no protobuf on its fast path.

Why a row version is a sound cache key. Every table is first listed as ``(id, version)`` in
the order ``build.py`` lists it; only rows whose version is not cached are fetched and
encoded. The version of a row is ``xmin`` and ``ctid`` of the tuple that holds it (for a
model, also those of its deployments, in position order):

- Postgres never updates a tuple in place: an ``UPDATE`` writes a new tuple whose ``xmin`` is
  the id of the writing (sub)transaction, so content can only change with a new version.
- A tuple written by a transaction that rolled back is never visible again, so its version
  never comes back either: a cache entry made from it (the caller's own uncommitted writes
  are visible to ``read``) is never matched, and the next read fetches the row again.
- Two writes to one row in the same transaction share ``xmin`` but not ``ctid``: the old
  tuple keeps its slot until that transaction has ended, so the new one gets another.
- ``xmin`` is 32 bits and wraps around. The cache remembers the 64-bit transaction horizon
  at which it was filled and starts over once that has moved by 2^31, so no id assigned
  while it holds entries can equal the ``xmin`` of a row younger than 2^31 transactions.
  (A row frozen before that would also need a rewrite into its very tuple slot, between two
  reads, by a transaction with exactly its 32-bit id.)
- Rows rewritten without a change of content (``VACUUM FULL``, ``CLUSTER``, an ``UPDATE``
  that sets what was there) only cost a re-encode: a new version is never a wrong hit.

The listing and the fetch are two statements; the caller holds the config lock, so no
writer can commit between them (a row that did change in between raises
``ConcurrentChange``, never a mix). All five listings come in one statement, one text per
table (a line ``id version`` per row); a text equal to the previous read's is taken over
whole, and otherwise its lines are compared ``CHUNK_ROWS`` at a time, so a change to one
tenant or a few new keys (appended: keys are listed by creation time) parses one chunk.
Decoding and encoding run in worker threads; the event loop receives strings only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf.message import Message
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import Text

from controlplane.snapshots.build import (
    _API_KEYS,
    _MODELS,
    _POLICIES,
    _PROVIDERS,
    _TENANTS,
    _api_key,
    _model,
    _policy,
    _provider,
    _tenant,
)
from controlplane.snapshots.scope import GroupView, reachable
from signalbox.api.config.v1 import snapshot_pb2

BODY_FIELDS = (10, 11, 12, 13, 14)
"""Snapshot fields of the body: tenants, api_keys, providers, models, policies."""

CHUNK_ROWS = 5000
"""Rows per listing chunk and per fetched JSON text (bounds how long one decode holds the GIL)."""

BULK_FRACTION = 4
"""When more than 1/``BULK_FRACTION`` of a table is not cached, it is fetched whole rather
than by a list of ids (a cold read, or a bulk import)."""

_XID_HORIZON = 1 << 31
"""How far the transaction horizon may move before cached ``xmin`` values are forgotten."""

_DEPLOYMENTS_FIELD = 9


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _frame(field_number: int, encoded: bytes) -> bytes:
    return _varint((field_number << 3) | 2) + _varint(len(encoded)) + encoded


def record(field_number: int, message: Message) -> bytes:
    """``message`` as one element of repeated field ``field_number``: tag, length, encoding."""
    return _frame(field_number, message.SerializeToString(deterministic=True))


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset


def _skip(data: bytes, offset: int) -> tuple[int, int]:
    """The field number at ``offset`` and where the field after it starts (wire format)."""
    tag, offset = _read_varint(data, offset)
    wire_type = tag & 7
    if wire_type == 0:
        _, offset = _read_varint(data, offset)
    elif wire_type == 1:
        offset += 8
    elif wire_type == 5:
        offset += 4
    elif wire_type == 2:
        length, offset = _read_varint(data, offset)
        offset += length
    else:
        raise ValueError(f"unexpected wire type {wire_type} in a deterministic encoding")
    return tag >> 3, offset


def _split_before(data: bytes, field_number: int) -> tuple[bytes, bytes]:
    """``data`` (a deterministic encoding) split where fields numbered above ``field_number``
    begin: deterministic serialization writes fields in number order."""
    offset = 0
    while offset < len(data):
        number, end = _skip(data, offset)
        if number > field_number:
            break
        offset = end
    return data[:offset], data[offset:]


# ---- per-row content, as cut needs it ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantRow:
    id: str
    name: str
    record: bytes


@dataclass(frozen=True, slots=True)
class KeyRow:
    tenant_id: str
    record: bytes


@dataclass(frozen=True, slots=True)
class ProviderRow:
    provider: snapshot_pb2.Provider
    """The decoded message: reachability is decided on it."""
    record: bytes


@dataclass(frozen=True, slots=True)
class ModelRow:
    id: str
    alias: str
    record: bytes
    """The whole model, every deployment included."""
    head: bytes
    """Its encoding before the deployments (fields 1..8)."""
    deployments: tuple[tuple[str, bytes], ...]
    """(provider id, field-9 record) of each deployment, in position order."""
    tail: bytes
    """Its encoding after the deployments (fields 10..)."""

    def trimmed(self, kept: Sequence[bytes]) -> bytes:
        """The record of this model carrying only the deployment records ``kept``."""
        return _frame(13, b"".join((self.head, *kept, self.tail)))


@dataclass(frozen=True, slots=True)
class PolicyRow:
    tenant_id: str
    """Empty for the platform default policy."""
    record: bytes


def _tenant_row(r: list[Any]) -> TenantRow:
    return TenantRow(r[0], r[1], record(10, _tenant(r)))


def _key_row(r: list[Any]) -> KeyRow:
    r[2] = bytes.fromhex(r[2])
    return KeyRow(r[1], record(11, _api_key(r)))


def _provider_row(r: list[Any]) -> ProviderRow:
    provider = _provider(r)
    return ProviderRow(provider, record(12, provider))


def _model_row(r: list[Any]) -> ModelRow:
    model = _model(r[:-1], r[-1])
    deployments = tuple((d.provider_id, record(_DEPLOYMENTS_FIELD, d)) for d in model.deployments)
    del model.deployments[:]
    head, tail = _split_before(model.SerializeToString(deterministic=True), _DEPLOYMENTS_FIELD)
    whole = _frame(13, b"".join((head, *(d for _, d in deployments), tail)))
    return ModelRow(r[0], r[1], whole, head, deployments, tail)


def _policy_row(r: list[Any]) -> PolicyRow:
    return PolicyRow(r[1], record(14, _policy(r)))


# ---- tables -------------------------------------------------------------------------------


def _version(alias: str) -> str:
    return f"{alias}.xmin::text || {alias}.ctid::text"


_MODEL_VERSION = (
    f"{_version('models')} || coalesce((SELECT string_agg({_version('d')}, '' ORDER BY d.position)"
    " FROM deployments d WHERE d.model_id = models.id), '')"
)
_MODEL_DEPLOYMENTS = (
    "coalesce((SELECT json_agg(json_build_array(d.id::text, d.provider_id::text, d.upstream_model, d.weight)"
    " ORDER BY d.position) FROM deployments d WHERE d.model_id = models.id), '[]'::json)"
)


class _Encoded(Protocol):
    @property
    def record(self) -> bytes: ...


T = TypeVar("T", bound=_Encoded)


def _pairs(lines: list[str]) -> list[tuple[str, str]]:
    """(id, version) of each line of a listing."""
    return [(row_id, version) for row_id, _, version in (line.partition(" ") for line in lines)]


@dataclass(frozen=True, slots=True)
class _Spec(Generic[T]):
    """How one table is listed, fetched and encoded."""

    id: str
    """The id column (as text)."""
    version: str
    """The row-version expression (see the module docstring)."""
    source: str
    """FROM clause of the listing: the rows that go into the snapshot."""
    order: str
    """The listing order (``build.py``'s)."""
    columns: str
    """The columns ``encode`` takes (``build.py``'s, in its order)."""
    encode: Callable[[list[Any]], T]
    fetch_source: str
    """FROM clause of a fetch by ids."""


_SPECS: tuple[_Spec[Any], ...] = (
    _Spec("tenants.id", _version("tenants"), _TENANTS[1], _TENANTS[2], _TENANTS[0], _tenant_row, "tenants"),
    _Spec(
        "api_keys.id", _version("api_keys"), _API_KEYS[1], _API_KEYS[2], _API_KEYS[0], _key_row, "api_keys"
    ),
    _Spec(
        "providers.id",
        _version("providers"),
        _PROVIDERS[1],
        _PROVIDERS[2],
        _PROVIDERS[0],
        _provider_row,
        "providers",
    ),
    _Spec(
        "models.id",
        _MODEL_VERSION,
        _MODELS[1],
        _MODELS[2],
        f"{_MODELS[0]}, {_MODEL_DEPLOYMENTS}",
        _model_row,
        "models",
    ),
    _Spec("p.id", _version("p"), _POLICIES[1], _POLICIES[2], _POLICIES[0], _policy_row, "policies p"),
)


class ConcurrentChange(RuntimeError):
    """A row changed between the listing and the fetch: the caller does not hold the config lock."""


@dataclass(frozen=True, slots=True)
class _Chunk(Generic[T]):
    """Up to ``CHUNK_ROWS`` consecutive rows of a listing: its lines and their content."""

    lines: list[str]
    rows: list[T]
    records: list[bytes]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A listing compared with the cache: which chunks are new and which rows to fetch."""

    chunks: int
    """How many chunks the listing has."""
    parsed: dict[int, tuple[list[str], list[tuple[str, str]]]]
    """Lines and (id, version) pairs of each chunk that is not the previous read's, by index."""
    missing: list[str]
    """Ids whose listed version is not cached."""
    listed: int


@dataclass
class _Table(Generic[T]):
    spec: _Spec[T]
    entries: dict[str, tuple[str, T]] = field(default_factory=dict)
    """id -> (version, content)."""
    listing: str = ""
    """The previous listing."""
    chunks: list[_Chunk[T]] = field(default_factory=list)
    """The previous listing, chunk by chunk."""

    def clear(self) -> None:
        self.entries = {}
        self.listing = ""
        self.chunks = []

    def listing_sql(self) -> str:
        """A scalar subquery: one line ``id version`` per row, in listing order (NULL: no rows).

        One aggregate, not chunks numbered by a window function: at 50,000 keys the window
        and the second sort it needs cost 30 ms more than the whole read is allowed."""
        s = self.spec
        return f"(SELECT string_agg({s.id}::text || ' ' || {s.version}, E'\\n' ORDER BY {s.order}) FROM {s.source})"

    def fetch_sql(self, by_id: bool) -> str:
        s = self.spec
        source = f"{s.fetch_source} WHERE {s.id} = ANY(CAST(:ids AS uuid[]))" if by_id else s.source
        return (
            f"SELECT json_agg(a)::text FROM (SELECT json_build_array({s.columns}, {s.version}) AS a,"
            f" row_number() OVER () AS n FROM {source}) t GROUP BY (n - 1) / {CHUNK_ROWS}"
        )

    def plan(self, listing: str) -> _Plan:
        """Worker thread: compare the listing with the cache (reads the cache only)."""
        if listing == self.listing:
            return _Plan(len(self.chunks), {}, [], sum(len(c.rows) for c in self.chunks))
        lines = listing.split("\n") if listing else []
        parsed: dict[int, tuple[list[str], list[tuple[str, str]]]] = {}
        missing: list[str] = []
        count = -(-len(lines) // CHUNK_ROWS)
        for i in range(count):
            chunk = lines[i * CHUNK_ROWS : (i + 1) * CHUNK_ROWS]
            if i < len(self.chunks) and self.chunks[i].lines == chunk:
                continue
            pairs = _pairs(chunk)
            parsed[i] = (chunk, pairs)
            for row_id, version in pairs:
                cached = self.entries.get(row_id)
                if cached is None or cached[0] != version:
                    missing.append(row_id)
        return _Plan(count, parsed, missing, len(lines))

    def encode(self, plan: _Plan, fetched: list[str]) -> dict[str, tuple[str, T]]:
        """Worker thread: decode and encode the fetched rows that were missing."""
        wanted = set(plan.missing)
        fresh: dict[str, tuple[str, T]] = {}
        for chunk in fetched:
            for r in json.loads(chunk):
                version = r.pop()
                if r[0] in wanted:
                    fresh[r[0]] = (version, self.spec.encode(r))
        return fresh

    def resolve(self, plan: _Plan, fresh: dict[str, tuple[str, T]]) -> list[_Chunk[T]]:
        """Worker thread: the new listing's chunks, each row's content in listing order."""
        chunks = []
        for i in range(plan.chunks):
            if i not in plan.parsed:
                chunks.append(self.chunks[i])
                continue
            lines, pairs = plan.parsed[i]
            rows: list[T] = []
            for row_id, version in pairs:
                entry = fresh.get(row_id) or self.entries.get(row_id)
                if entry is None or entry[0] != version:
                    raise ConcurrentChange(f"{self.spec.fetch_source} row {row_id} changed while it was read")
                rows.append(entry[1])
            chunks.append(_Chunk(lines, rows, [r.record for r in rows]))
        return chunks

    def commit(
        self, listing: str, chunks: list[_Chunk[T]], fresh: dict[str, tuple[str, T]], listed: int
    ) -> None:
        """On the event loop: the read succeeded, keep what it saw."""
        self.entries.update(fresh)
        if len(self.entries) != listed:  # rows that are gone (deleted, or never committed)
            keep = {row_id for c in chunks for row_id, _ in _pairs(c.lines)}
            self.entries = {k: v for k, v in self.entries.items() if k in keep}
        self.listing = listing
        self.chunks = chunks

    async def read(self, session: AsyncSession, listing: str) -> tuple[list[T], list[bytes]]:
        """The table's rows and records, given its listing (``listing_sql``) read just now."""
        plan = await asyncio.to_thread(self.plan, listing)
        fresh: dict[str, tuple[str, T]] = {}
        if plan.missing:
            by_id = len(plan.missing) * BULK_FRACTION <= plan.listed
            query = text(self.fetch_sql(by_id))
            if by_id:
                query = query.bindparams(bindparam("ids", plan.missing, type_=ARRAY(Text)))
            fetched = [str(t) for t in (await session.scalars(query)).all()]
            fresh = await asyncio.to_thread(self.encode, plan, fetched)
        chunks = (
            await asyncio.to_thread(self.resolve, plan, fresh) if plan.parsed else self.chunks[: plan.chunks]
        )
        self.commit(listing, chunks, fresh, plan.listed)
        rows: list[T] = []
        records: list[bytes] = []
        for c in chunks:
            rows.extend(c.rows)
            records.extend(c.records)
        return rows, records


@dataclass(frozen=True, slots=True)
class FullRows:
    """Every row of the config tables that goes into a snapshot, encoded, in payload order.

    Immutable once read: ``cut`` may run on it in a worker thread while the next read runs.
    """

    tenants: list[TenantRow]
    api_keys: list[KeyRow]
    providers: list[ProviderRow]
    models: list[ModelRow]
    policies: list[PolicyRow]
    records: dict[int, list[bytes]]
    """Every record of each body field: the body of a group that sees everything."""


@dataclass(frozen=True, slots=True)
class Body:
    """Records of fields 10..14 for one group, in payload order."""

    records: dict[int, list[bytes]]
    """Keys exactly 10, 11, 12, 13, 14 (empty lists allowed). Shared with other bodies and
    with ``FullRows``: never mutate them."""

    def encoded(self) -> bytes:
        """The body as payload bytes: fields 10..14 of the group's snapshot."""
        return b"".join(b"".join(self.records[f]) for f in BODY_FIELDS)


class RowCache:
    """Per replica, lives as long as the SnapshotPublisher. Not shared across threads
    concurrently (concurrent ``read`` calls on one event loop wait for each other)."""

    def __init__(self) -> None:
        self._tables: tuple[_Table[Any], ...] = tuple(_Table(spec) for spec in _SPECS)
        self._horizon: int | None = None
        self._lock = asyncio.Lock()

    async def read(self, session: AsyncSession) -> FullRows:
        """Reads the current config tables (inside the caller's transaction, which holds the
        config lock) and returns everything needed to cut every group's body, re-encoding
        only rows that are new or changed since the last call."""
        async with self._lock:
            # One statement, one round trip: the transaction horizon and every listing.
            listings = ", ".join(table.listing_sql() for table in self._tables)
            result = (
                await session.execute(
                    text(f"SELECT pg_snapshot_xmin(pg_current_snapshot())::text, {listings}")
                )
            ).one()
            horizon = int(result[0])
            if self._horizon is None or horizon - self._horizon >= _XID_HORIZON:
                for table in self._tables:
                    table.clear()
                self._horizon = horizon
            read = [
                await table.read(session, listing or "")
                for table, listing in zip(self._tables, result[1:], strict=True)
            ]
        return FullRows(
            tenants=read[0][0],
            api_keys=read[1][0],
            providers=read[2][0],
            models=read[3][0],
            policies=read[4][0],
            records={f: records for f, (_, records) in zip(BODY_FIELDS, read, strict=True)},
        )


def _listed(allowed: frozenset[str] | None, *keys: str) -> bool:
    return allowed is None or any(k in allowed for k in keys)


def cut(full: FullRows, group: GroupView) -> Body:
    """The records of ``group``'s body: ``scope.scope_snapshot`` on records.

    Pure and CPU-only (call it in a worker thread). Tenants by the group's list (id or name),
    keys and policies follow their tenant (the platform default policy is always kept),
    providers by the list and ``scope.reachable``, models by the list with their deployments
    trimmed to kept providers (dropped when they had some and none is left). A group with no
    lists that reaches every provider gets the full lists as they are.
    """
    kept_providers = [
        p
        for p in full.providers
        if _listed(group.providers, p.provider.id, p.provider.name) and reachable(p.provider, group)
    ]
    every_provider = len(kept_providers) == len(full.providers)
    records = dict(full.records)
    if group.tenants is not None:
        tenants = [t for t in full.tenants if _listed(group.tenants, t.id, t.name)]
        tenant_ids = {t.id for t in tenants}
        records[10] = [t.record for t in tenants]
        records[11] = [k.record for k in full.api_keys if k.tenant_id in tenant_ids]
        records[14] = [p.record for p in full.policies if not p.tenant_id or p.tenant_id in tenant_ids]
    if not every_provider:
        records[12] = [p.record for p in kept_providers]
    if group.models is not None or not every_provider:
        provider_ids = {p.provider.id for p in kept_providers}
        models = []
        for m in full.models:
            if not _listed(group.models, m.id, m.alias):
                continue
            kept = [d for provider_id, d in m.deployments if provider_id in provider_ids]
            if m.deployments and not kept:
                continue
            models.append(m.record if len(kept) == len(m.deployments) else m.trimmed(kept))
        records[13] = models
    return Body(records)
