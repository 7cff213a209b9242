"""A shipped record line checked on its own, and turned into its row.

Per line: bounded in size, a JSON object, ``seq``/``hash``/``prev_hash``/``ts``/``record_id``
well-formed, of this chain and node, and its hash recomputed over the line's bytes
(``hash_of_line``). How the records continue the chain is ``controlplane.evidence.ingest``'s.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from controlplane.errors import shown
from controlplane.evidence.errors import ChainBroken, EvidenceRefused
from controlplane.evidence.native import rows as _rows
from controlplane.limits import INT64_MAX, KEY_ID_CHARS, NAME_CHARS, RESULT_CHARS
from dataplane.evidence.fields import read_fields
from dataplane.evidence.records import HASH_MEMBER_BYTES, HASH_MEMBER_START, hash_of_line

MAX_RECORD_BYTES = 64 * 1024
MAX_AHEAD_S = 86_400.0
"""A record dated more than this after the control plane received it is stored (partitioned,
kept by retention, found by time) at its receipt instead; its own ``ts`` stays in its body
as the node wrote it. A node clock far ahead put records in the DEFAULT partition, which
retention never drops: kept forever. (A day: clocks a little ahead keep their times.)"""
TS_MIN = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
TS_MAX = datetime(9999, 1, 1, tzinfo=UTC).timestamp()

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX64_STR = _HEX64.fullmatch

COLUMNS = (
    "chain_id, seq, ts, record_id, hash, prev_hash, node_id, correlation_id, tenant_id, api_key_id, model, "
    "outcome, body"
)
"""The ``evidence_records`` columns a record's COPY row holds, in order."""

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = struct.pack("!h", -1)
"""A binary COPY is ``COPY_HEADER``, rows, ``COPY_TRAILER``."""

_PG_EPOCH_US = 946_684_800_000_000
"""2000-01-01 UTC in microseconds since 1970: binary timestamptz counts from it."""
_DAY = 86_400
_LEN = struct.Struct("!i").pack
_SEQ_TS = struct.Struct("!iqiq").pack
_HASHES = struct.Struct("!i32si32s").pack


@dataclass(frozen=True, slots=True)
class Parsed:
    """The records of a batch that passed the checks of their own, in columns: record ``i``
    is line ``i + 1`` of the batch. Columns rather than an object per record: this is built
    for every record shipped, and pickled back from the parsing process."""

    seqs: list[int]
    hashes: list[bytes]
    prev_hashes: list[bytes]
    rows: bytes
    """The records' rows in binary COPY format, concatenated (no header, no trailer)."""
    ends: list[int]
    """Record ``i``'s row is ``rows[ends[i - 1] : ends[i]]`` (from 0 for the first)."""
    days: set[int]
    """Days since 1970 (UTC) the records' times fall on: the partitions they need."""
    refused: EvidenceRefused | None
    """Why the line after the last record was refused (None: every line parsed)."""
    spends: dict[int, tuple[str, str, int, int]] = field(default_factory=dict)
    """Record ``i``'s tenant id, key id, cost (nano-USD) and time (us since 1970) when it
    has a cost (``cost.total_nanos`` > 0, and ids): what budgets are tracked by."""

    def rows_of(self, indexes: Sequence[int]) -> bytes | memoryview:
        """The rows of records ``indexes`` (ascending), joined; a view, not a copy, when
        they are contiguous."""
        if not indexes:
            return b""
        first, last = indexes[0], indexes[-1]
        ends = self.ends
        if last - first + 1 == len(indexes):
            return memoryview(self.rows)[ends[first - 1] if first else 0 : ends[last]]
        return b"".join(self.rows[ends[i - 1] if i else 0 : ends[i]] for i in indexes)

    def times(self) -> set[datetime]:
        return {datetime.fromtimestamp(day * _DAY, UTC) for day in self.days}


def _text(value: Any, limit: int) -> bytes:
    """A filter column: a string as sent (bounded, without NUL), anything else empty."""
    if type(value) is not str:
        return b"\0\0\0\0"
    text: str = value
    if len(text) > limit or "\x00" in text:
        text = text.replace("\x00", "")[:limit]
    data = text.encode()
    return _LEN(len(data)) + data


def where(chain_id: str, line: int, seq: int | None = None) -> str:
    """How a refusal names a record: its chain, seq (when readable) and line in the batch."""
    at = f"record seq {seq} (line {line} of the batch)" if seq is not None else f"line {line} of the batch"
    return f"chain {shown(chain_id)}: {at}"


_EMPTY = b"\0\0\0\0"
_HASH_AT = len(HASH_MEMBER_START)


def _str(value: str | None, limit: int) -> bytes:
    if value is None:
        return _EMPTY
    if len(value) > limit or "\x00" in value:
        value = value.replace("\x00", "")[:limit]
    data = value.encode()
    return _LEN(len(data)) + data


Spend = tuple[str, str, int]
"""A record's tenant id, API key id ("" for other callers) and cost in nano-USD."""
_Row = tuple[int, bytes, bytes, int, bytes, Spend | None]
"""A line's seq, hash, prev_hash, time (us since 1970), COPY row and spend."""
_ID_CHARS = 36
"""Tenant and key ids are UUIDs: a cost under another id is not a budget's."""
_LIMITS = (
    MAX_RECORD_BYTES,
    KEY_ID_CHARS,
    NAME_CHARS,
    RESULT_CHARS,
    TS_MIN,
    TS_MAX,
    MAX_AHEAD_S,
    _PG_EPOCH_US,
    _ID_CHARS,
)
"""What ``_rows.parse`` checks and builds rows with (its docstring names them)."""


def _total_nanos(cost: object) -> object:
    return cost.get("total_nanos") if type(cost) is dict else None


def _spend(tenant_id: object, api_key_id: object, cost: object) -> Spend | None:
    """The spend of a record whose ``cost.total_nanos`` (``cost``) is a positive integer and
    whose tenant (and key, when there is one) are ids; None for anything else."""
    if (
        type(cost) is int
        and 0 < cost <= INT64_MAX
        and type(tenant_id) is str
        and len(tenant_id) == _ID_CHARS
        and (api_key_id is None or (type(api_key_id) is str and len(api_key_id) in (0, _ID_CHARS)))
    ):
        return tenant_id, api_key_id or "", cost
    return None


class _Batch:
    """The constant parts of a batch's rows, and the two ways a line becomes one."""

    def __init__(self, chain_id: str, node_id: str, received: float) -> None:
        chain_bytes = chain_id.encode()
        node_bytes = node_id.encode()
        self.chain_id = chain_id
        self.node_id = node_id
        self.head = struct.pack("!h", 13) + _LEN(len(chain_bytes)) + chain_bytes
        self.node_field = _LEN(len(node_bytes)) + node_bytes
        self.received = received
        """When the batch arrived (seconds since 1970, by the database's clock): the time a
        record dated too far after it is stored at."""

    def fast(self, body: bytes) -> _Row | None:
        """The row of a well-formed line, with only the members read that are stored
        (``read_fields``) and nothing checked twice: this runs for every record shipped.
        None for anything else, which ``general`` then judges and names. Takes only lines
        ``general`` takes, with the same row, save the one difference ``read_fields``
        describes (tests/controlplane/evidence/test_records.py compares them on hostile
        input)."""
        fields = read_fields(body)
        if fields is None:
            return None
        seq, ts, record_id, prev = fields.seq, fields.ts, fields.record_id, fields.prev_hash
        start = len(body) - HASH_MEMBER_BYTES
        hasher = hashlib.sha256(body[:start])
        hasher.update(b"}")
        computed = hasher.hexdigest()
        if not (
            1 <= seq <= INT64_MAX
            and TS_MIN <= ts < TS_MAX
            and 0 < len(record_id) <= KEY_ID_CHARS
            and "\x00" not in record_id
            and fields.node_id == self.node_id
            and fields.chain_id == self.chain_id
            and _HEX64_STR(prev)
            # The computed hash is lowercase hex: equal to it, ``hash`` is well-formed too.
            and fields.hash == computed
            # ``hash`` is the line's last member, as written (and as ``hash_of_line`` reads it).
            and body.startswith(HASH_MEMBER_START, start)
            and body.endswith(b'"}')
            and body[start + _HASH_AT : -2] == computed.encode()
        ):
            return None
        routing, outcome = fields.routing, fields.outcome
        served = routing.served_by if routing is not None else None
        model = served.model if served is not None else None
        code = outcome.code if outcome is not None else None
        return self.row(
            seq,
            ts,
            record_id,
            bytes.fromhex(computed),
            bytes.fromhex(prev),
            (
                _str(fields.correlation_id, NAME_CHARS),
                _str(fields.tenant_id, NAME_CHARS),
                _str(fields.api_key_id, NAME_CHARS),
                _str(model, NAME_CHARS),
                _str(code, RESULT_CHARS),
            ),
            body,
            _spend(fields.tenant_id, fields.api_key_id, fields.cost.total_nanos if fields.cost else None),
        )

    def slow(self, line: bytes, line_no: int) -> _Row | EvidenceRefused:
        """A line the fast path did not take (``line`` as shipped, its newline included): its
        row, or the refusal that names what is wrong with it."""
        if len(line) > MAX_RECORD_BYTES:
            return EvidenceRefused(
                f"{where(self.chain_id, line_no)}: {len(line)} bytes, at most {MAX_RECORD_BYTES}"
            )
        return self.general(line[:-1] if line.endswith(b"\n") else line, line_no)

    def general(self, body: bytes, line_no: int) -> _Row | EvidenceRefused:
        """Any line: its row, or the refusal that names what is wrong with it."""
        chain_id = self.chain_id
        try:
            record = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            refused = EvidenceRefused(f"{where(chain_id, line_no)}: not a JSON record")
            refused.__cause__ = exc
            return refused
        if type(record) is not dict:
            return EvidenceRefused(f"{where(chain_id, line_no)}: not a JSON object")
        get = record.get
        seq, digest, prev, ts, record_id = (
            get("seq"),
            get("hash"),
            get("prev_hash"),
            get("ts"),
            get("record_id"),
        )
        if not (
            type(seq) is int
            and 1 <= seq <= INT64_MAX
            and type(digest) is str
            and _HEX64_STR(digest)
            and type(prev) is str
            and _HEX64_STR(prev)
            and (type(ts) is float or type(ts) is int)
            and TS_MIN <= ts < TS_MAX
            and type(record_id) is str
            and 0 < len(record_id) <= KEY_ID_CHARS
            and "\x00" not in record_id
            and get("node_id") == self.node_id
            and get("chain_id") == chain_id
        ):
            return _refusal(chain_id, self.node_id, line_no, record)
        if hash_of_line(body) != digest:
            at = where(chain_id, line_no, seq)
            return ChainBroken(f"{at}: hash does not match the record's content (edited?)", seq=seq)
        routing = get("routing")
        served = routing.get("served_by") if type(routing) is dict else None
        outcome = get("outcome")
        return self.row(
            seq,
            ts,
            record_id,
            bytes.fromhex(digest),
            bytes.fromhex(prev),
            (
                _text(get("correlation_id"), NAME_CHARS),
                _text(get("tenant_id"), NAME_CHARS),
                _text(get("api_key_id"), NAME_CHARS),
                _text(served.get("model") if type(served) is dict else None, NAME_CHARS),
                _text(outcome.get("code") if type(outcome) is dict else None, RESULT_CHARS),
            ),
            body,
            _spend(get("tenant_id"), get("api_key_id"), _total_nanos(get("cost"))),
        )

    def row(
        self,
        seq: int,
        ts: float,
        record_id: str,
        digest: bytes,
        prev: bytes,
        filters: tuple[bytes, bytes, bytes, bytes, bytes],
        body: bytes,
        spend: Spend | None,
    ) -> _Row:
        """A record's binary COPY row (``COLUMNS``), its filter columns already encoded."""
        if ts > self.received + MAX_AHEAD_S:
            ts = self.received
        # As ``datetime.fromtimestamp`` rounds (the fraction alone, half to even).
        whole = int(ts)
        us = whole * 1_000_000 + round((ts - whole) * 1e6)
        record_id_bytes = record_id.encode()
        correlation_id, tenant_id, api_key_id, model, code = filters
        row = b"".join(
            (
                self.head,
                _SEQ_TS(8, seq, 8, us - _PG_EPOCH_US),
                _LEN(len(record_id_bytes)),
                record_id_bytes,
                _HASHES(32, digest, 32, prev),
                self.node_field,
                correlation_id,
                tenant_id,
                api_key_id,
                model,
                code,
                _LEN(len(body)),
                body,
            )
        )
        return seq, digest, prev, us, row, spend


def parse_lines(chain_id: str, node_id: str, lines: Sequence[bytes], received: float) -> Parsed:
    """Every line checked on its own (bounded, JSON, its own hash, its chain and node) up to
    the first one refused; the records before it and that refusal. ``received``: when the
    batch arrived, by the database's clock (seconds since 1970): a record dated more than
    ``MAX_AHEAD_S`` after it is stored at it. Compiled (``_rows``) unless the package was
    built without a C compiler; ``parse_lines_python`` is the same in Python."""
    if _rows is None:
        return parse_lines_python(chain_id, node_id, lines, received)
    batch = _Batch(chain_id, node_id, received)
    seqs, hashes, prevs, rows, ends, days, refused, spends = _rows.parse(
        batch,
        lines if type(lines) is list else list(lines),
        read_fields,
        hashlib.sha256,
        batch.slow,
        _str,
        _LIMITS,
    )
    return Parsed(seqs, hashes, prevs, rows, ends, days, refused, spends)


def parse_packed_lines(
    chain_id: str, node_id: str, data: memoryview, count: int, out: memoryview, received: float
) -> tuple[Parsed, int]:
    """``parse_lines`` of the ``count`` lines ``_rows.pack`` wrote to ``data``, with the rows
    written to ``out``: the columns (``rows`` empty) and the rows' length in ``out``, or the
    columns with their rows and -1 when the rows outgrew ``out``. Needs ``_rows``."""
    assert _rows is not None
    batch = _Batch(chain_id, node_id, received)
    seqs, hashes, prevs, rows, ends, days, refused, spends = _rows.parse_packed(
        batch, data, count, out, read_fields, hashlib.sha256, batch.slow, _str, _LIMITS
    )
    if type(rows) is int:
        return Parsed(seqs, hashes, prevs, b"", ends, days, refused, spends), rows
    return Parsed(seqs, hashes, prevs, rows, ends, days, refused, spends), -1


def parse_lines_python(chain_id: str, node_id: str, lines: Sequence[bytes], received: float) -> Parsed:
    """``parse_lines`` in Python: what runs when ``_rows`` is not built, and what tests
    compare it with."""
    seqs: list[int] = []
    hashes: list[bytes] = []
    prevs: list[bytes] = []
    ends: list[int] = []
    days: set[int] = set()
    rows: list[bytes] = []
    size = 0
    batch = _Batch(chain_id, node_id, received)
    fast, slow = batch.fast, batch.slow
    refused: EvidenceRefused | None = None
    spends: dict[int, tuple[str, str, int, int]] = {}
    for line_no, line in enumerate(lines, start=1):
        parsed = (
            fast(line[:-1] if line.endswith(b"\n") else line) if len(line) <= MAX_RECORD_BYTES else None
        ) or slow(line, line_no)
        if isinstance(parsed, EvidenceRefused):
            refused = parsed
            break
        seq, digest, prev, us, row, spend = parsed
        if spend is not None:
            spends[len(seqs)] = (*spend, us)
        rows.append(row)
        size += len(row)
        ends.append(size)
        seqs.append(seq)
        hashes.append(digest)
        prevs.append(prev)
        days.add(us // 86_400_000_000)
    return Parsed(seqs, hashes, prevs, b"".join(rows), ends, days, refused, spends)


def _refusal(chain_id: str, node_id: str, line_no: int, record: dict[str, Any]) -> EvidenceRefused:
    """The refusal that names what is wrong with ``record`` (it failed the fast check)."""
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= INT64_MAX:
        return EvidenceRefused(f"{where(chain_id, line_no)}: seq must be an integer from 1 to {INT64_MAX}")
    at = where(chain_id, line_no, seq)
    digest, prev = record.get("hash"), record.get("prev_hash")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        return EvidenceRefused(f"{at}: hash must be 64 lowercase hex digits", seq=seq)
    if not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        return EvidenceRefused(f"{at}: prev_hash must be 64 lowercase hex digits", seq=seq)
    if record.get("node_id") != node_id:
        return EvidenceRefused(f"{at}: node_id is not {shown(node_id)}", seq=seq)
    # Every record names its chain (docs/evidence-format.md), and the pack verifier refuses
    # one that does not: stored, it would make every pack holding it fail to verify.
    of_chain = record.get("chain_id")
    if of_chain is None or of_chain == "":
        return EvidenceRefused(f"{at}: chain_id is missing (every record names its chain)", seq=seq)
    if not isinstance(of_chain, str):
        return EvidenceRefused(f"{at}: chain_id must be a string", seq=seq)
    if of_chain != chain_id:
        return EvidenceRefused(f"{at}: belongs to chain {shown(of_chain)}", seq=seq)
    ts = record.get("ts")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not TS_MIN <= ts < TS_MAX:
        return EvidenceRefused(f"{at}: ts must be seconds since the epoch (years 2000..9998)", seq=seq)
    return EvidenceRefused(f"{at}: record_id must be 1..{KEY_ID_CHARS} characters without NUL", seq=seq)
