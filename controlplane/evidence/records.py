"""A shipped record line checked on its own, and turned into its row.

Per line: bounded in size, a JSON object, ``seq``/``hash``/``prev_hash``/``ts``/``record_id``
well-formed, of this chain and node, and its hash recomputed over the line's bytes
(``hash_of_line``). How the records continue the chain is ``controlplane.evidence.ingest``'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from controlplane.errors import shown
from controlplane.evidence.errors import ChainBroken, EvidenceRefused
from controlplane.limits import INT64_MAX, KEY_ID_CHARS, NAME_CHARS, RESULT_CHARS
from dataplane.evidence.log import hash_of_line
from dataplane.evidence.shipper import chain_of

MAX_RECORD_BYTES = 64 * 1024
TS_MIN = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
TS_MAX = datetime(9999, 1, 1, tzinfo=UTC).timestamp()

_HEX64 = re.compile(r"[0-9a-f]{64}")

COLUMNS = (
    "chain_id, seq, ts, record_id, hash, prev_hash, node_id, correlation_id, tenant_id, api_key_id, model, "
    "outcome, body"
)
"""The ``evidence_records`` columns a record's COPY row holds, in order."""


@dataclass(frozen=True, slots=True)
class Record:
    line: int
    seq: int
    hash: bytes
    prev_hash: bytes
    ts: datetime
    copy: bytes
    """The record's row in COPY text format (a line): built where it is parsed, so the
    event loop only joins the rows it stores."""


def _text(value: Any, limit: int) -> str:
    if type(value) is not str:
        return ""
    if len(value) <= limit and "\x00" not in value:
        return value
    return value.replace("\x00", "")[:limit]


def where(chain_id: str, line: int, seq: int | None = None) -> str:
    """How a refusal names a record: its chain, seq (when readable) and line in the batch."""
    at = f"record seq {seq} (line {line} of the batch)" if seq is not None else f"line {line} of the batch"
    return f"chain {shown(chain_id)}: {at}"


def parse_record(chain_id: str, node_id: str, line_no: int, line: bytes) -> Record:
    """A record line checked on its own: bounded, JSON, its own hash, its chain and node."""
    if len(line) > MAX_RECORD_BYTES:
        raise EvidenceRefused(f"{where(chain_id, line_no)}: {len(line)} bytes, at most {MAX_RECORD_BYTES}")
    body = line[:-1] if line.endswith(b"\n") else line
    try:
        record = json.loads(body)
    except ValueError as exc:
        raise EvidenceRefused(f"{where(chain_id, line_no)}: not a JSON record") from exc
    if type(record) is not dict:
        raise EvidenceRefused(f"{where(chain_id, line_no)}: not a JSON object")
    get = record.get
    seq, digest, prev, ts, record_id = get("seq"), get("hash"), get("prev_hash"), get("ts"), get("record_id")
    # The common case in one expression (this runs for every record shipped); the precise
    # refusal is found by ``_refuse`` when anything is off.
    if not (
        type(seq) is int
        and 1 <= seq <= INT64_MAX
        and type(digest) is str
        and _HEX64.fullmatch(digest)
        and type(prev) is str
        and _HEX64.fullmatch(prev)
        and (type(ts) is float or type(ts) is int)
        and TS_MIN <= ts < TS_MAX
        and type(record_id) is str
        and 0 < len(record_id) <= KEY_ID_CHARS
        and get("node_id") == node_id
        and (get("chain_id") or f"{node_id}/0") == chain_id
    ):
        _refuse(chain_id, node_id, line_no, record)
    if hash_of_line(body) != digest:
        at = where(chain_id, line_no, seq)
        raise ChainBroken(f"{at}: hash does not match the record's content (edited?)", seq=seq)
    routing = get("routing")
    served = routing.get("served_by") if type(routing) is dict else None
    outcome = get("outcome")
    when = datetime.fromtimestamp(ts, UTC)
    fields = (
        copy_text(chain_id),
        str(seq),
        when.isoformat(),
        copy_text(record_id),
        "\\\\x" + digest,
        "\\\\x" + prev,
        copy_text(node_id),
        copy_text(_text(get("correlation_id"), NAME_CHARS)),
        copy_text(_text(get("tenant_id"), NAME_CHARS)),
        copy_text(_text(get("api_key_id"), NAME_CHARS)),
        copy_text(_text(served.get("model") if type(served) is dict else None, NAME_CHARS)),
        copy_text(_text(outcome.get("code") if type(outcome) is dict else None, RESULT_CHARS)),
        "\\\\x" + body.hex(),
    )
    copy = ("\t".join(fields) + "\n").encode()
    return Record(line_no, seq, bytes.fromhex(digest), bytes.fromhex(prev), when, copy)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def copy_text(value: str) -> str:
    """``value`` as a COPY text-format field."""
    return value.translate(_COPY_ESCAPES)


def parse_lines(
    chain_id: str, node_id: str, lines: Sequence[bytes]
) -> tuple[list[Record], EvidenceRefused | None]:
    """Every line parsed up to the first one refused (and that refusal)."""
    records: list[Record] = []
    for n, line in enumerate(lines, start=1):
        try:
            records.append(parse_record(chain_id, node_id, n, line))
        except EvidenceRefused as exc:
            return records, exc
    return records, None


def _refuse(chain_id: str, node_id: str, line_no: int, record: dict[str, Any]) -> NoReturn:
    """Raise the refusal that names what is wrong with ``record`` (it failed the fast check)."""
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= INT64_MAX:
        raise EvidenceRefused(f"{where(chain_id, line_no)}: seq must be an integer from 1 to {INT64_MAX}")
    at = where(chain_id, line_no, seq)
    digest, prev = record.get("hash"), record.get("prev_hash")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise EvidenceRefused(f"{at}: hash must be 64 lowercase hex digits", seq=seq)
    if not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        raise EvidenceRefused(f"{at}: prev_hash must be 64 lowercase hex digits", seq=seq)
    if record.get("node_id") != node_id:
        raise EvidenceRefused(f"{at}: node_id is not {shown(node_id)}", seq=seq)
    if chain_of(record, node_id) != chain_id:
        raise EvidenceRefused(f"{at}: belongs to chain {shown(chain_of(record, node_id))}", seq=seq)
    ts = record.get("ts")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not TS_MIN <= ts < TS_MAX:
        raise EvidenceRefused(f"{at}: ts must be seconds since the epoch (years 2000..9998)", seq=seq)
    raise EvidenceRefused(f"{at}: record_id must be 1..{KEY_ID_CHARS} characters", seq=seq)
