"""A shipped line's two readings agree: ingest's fast path (typed decoding of the members it
stores) never takes a line the general path refuses, and gives the same row when both take it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.evidence import records
from controlplane.evidence.errors import EvidenceRefused
from controlplane.evidence.records import Parsed, _Batch, parse_lines, parse_lines_python, parse_packed_lines
from dataplane.evidence.records import GENESIS_HASH, seal, stored_line

NODE = "node-a"
TENANT = "6f1c2b0e-9a57-4c1e-8d1f-0a2b3c4d5e6f"
KEY = "0e9d8c7b-6a59-4847-9362-514f3e2d1c0b"
CHAIN = f"{NODE}/0"


def record(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seq": 1,
        "prev_hash": GENESIS_HASH,
        "ts": 1_796_000_000.25,
        "record_id": "0f" * 16,
        "node_id": NODE,
        "chain_id": CHAIN,
        "correlation_id": "corr-1",
        "tenant_id": TENANT,
        "api_key_id": KEY,
        "cost": {"currency": "USD", "total_nanos": 920},
        "routing": {"served_by": {"model": "small", "provider": "sim"}},
        "outcome": {"code": "OK", "message": ""},
        "usage": {"input_tokens": 3},
    }
    base.update(overrides)
    return base


def reseal(body: bytes) -> bytes:
    """``body`` (a JSON object's text, any bytes) with a correct hash member appended."""
    return stored_line(body, hashlib.sha256(body).hexdigest())


def columns(parsed: Parsed) -> tuple[Any, ...]:
    refused = parsed.refused
    return (
        parsed.seqs,
        parsed.hashes,
        parsed.prev_hashes,
        parsed.rows,
        parsed.ends,
        parsed.days,
        parsed.spends,
        None if refused is None else (type(refused), refused.message, refused.seq),
    )


def packed_parse(lines: list[bytes], received: float, room: int) -> Parsed:
    """``parse_packed_lines`` as the parsing process runs it (``handover``): the lines packed
    into one buffer, the rows written to another of ``room`` bytes (read back from it)."""
    assert records._rows is not None
    data = bytearray(records._rows.packed_size(lines) + 3)  # a buffer larger than its lines
    used = records._rows.pack(lines, memoryview(data))
    out = bytearray(room)
    parsed, size = parse_packed_lines(
        CHAIN, NODE, memoryview(data)[:used], len(lines), memoryview(out), received
    )
    if size < 0:
        return parsed  # the rows outgrew ``out``: they came back themselves
    assert not parsed.rows
    return dataclasses.replace(parsed, rows=bytes(out[:size]))


def same_parse(lines: list[bytes], received: float) -> Parsed:
    """The compiled parser (``_rows``, which the suite runs: tests/signalbox/test_compiled.py)
    gives exactly the Python one's columns, rows and refusal; so does it over packed lines,
    with room for the rows, with none, and with room for some."""
    assert records._rows is not None
    compiled = parse_lines(CHAIN, NODE, lines, received)
    expected = columns(parse_lines_python(CHAIN, NODE, lines, received))
    assert columns(compiled) == expected
    for room in (len(compiled.rows) + 4096, 0, len(compiled.rows) // 2):
        assert columns(packed_parse(lines, received, room)) == expected, room
    return compiled


def agree(line: bytes) -> None:
    for received in (time.time(), 1_796_000_000.25 - 86_400 * 2):  # the second: dated ahead
        same_parse([line], received)
        same_parse([line[:-1] if line.endswith(b"\n") else line + b"\n"], received)
    batch = _Batch(CHAIN, NODE, time.time())
    body = line[:-1] if line.endswith(b"\n") else line
    general = batch.general(body, 1)
    fast = batch.fast(body)
    if fast is None:
        return
    if isinstance(general, EvidenceRefused):
        # The one difference ``read_fields`` documents: valid JSON (RFC 8259) that orjson
        # refuses, such as a number beyond a double's range in a member ingest skips.
        assert general.message.endswith("not a JSON record"), (line, general)
        assert isinstance(json.loads(body), dict)
        return
    assert fast == general


def test_fast_path_reads_a_normal_record_as_the_general_path_does() -> None:
    line = seal(record())
    batch = _Batch(CHAIN, NODE, time.time())
    fast = batch.fast(line[:-1])
    assert fast is not None  # the common case takes the fast path
    assert fast == batch.general(line[:-1], 1)
    assert fast[-1] == (TENANT, KEY, 920)  # its cost counts toward the tenant's and key's budgets


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),
    st.sampled_from(["", "\x00", "a\x00b", "é", "x" * 300, GENESIS_HASH, "AB" * 32, "ab" * 31]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["model", "code", "served_by"]), st.text(max_size=5), max_size=2),
    st.fixed_dictionaries(
        {
            "total_nanos": st.one_of(
                st.integers(min_value=-5, max_value=2**64), st.floats(), st.none(), st.text()
            )
        }
    ),
    st.sampled_from([TENANT, KEY, TENANT[:-1], ""]),
)
FIELDS = st.sampled_from(
    [
        "seq",
        "prev_hash",
        "ts",
        "record_id",
        "node_id",
        "chain_id",
        "correlation_id",
        "tenant_id",
        "api_key_id",
        "cost",
        "routing",
        "outcome",
        "extra",
    ]
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(FIELDS, ODD_VALUES, max_size=4), st.sets(FIELDS, max_size=2))
def test_odd_members_are_read_alike(changes: dict[str, Any], removed: set[str]) -> None:
    value = record(**changes)
    for name in removed:
        value.pop(name, None)
    agree(seal(value))


RAW_PIECES = st.sampled_from(
    [
        b'"x":1e999',
        b'"x":"\xff"',
        b'"x":"\\ud800"',
        b'"x":NaN',
        b'"x":-0',
        b'"x":[1,]',
        b'"seq":1',
        b'"seq":2',
        b'"seq":1.0',
        b'"ts":1e999',
        b'"ts":1796000000',
        b'"node_id":"other"',
        b'"tenant_id":"\xc3\xa9"',
        b'"tenant_id":7',
        b'"routing":{"served_by":{"model":1}}',
        b'"outcome":{"code":null}',
        b'"hash":"' + b"0" * 64 + b'"',
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(RAW_PIECES, max_size=3), st.booleans())
def test_raw_member_text_is_read_alike(pieces: list[bytes], first: bool) -> None:
    """Member text JSON encoders would not write (duplicates, invalid UTF-8, huge numbers)."""
    body = json.dumps(record(), sort_keys=True, separators=(",", ":")).encode()
    extra = b",".join(pieces)
    if extra:
        body = (b"{" + extra + b"," + body[1:]) if first else (body[:-1] + b"," + extra + b"}")
    agree(reseal(body))


@given(st.binary(max_size=40), st.integers(min_value=0, max_value=400))
@settings(max_examples=300, deadline=None)
def test_bytes_spliced_into_a_line_are_read_alike(junk: bytes, at: int) -> None:
    line = seal(record())
    agree(line[:at] + junk + line[at:])
    body = line[:-1]
    cut = body[: -len(b',"hash":"') - 66]
    agree(reseal(cut[:at] + junk + cut[at:] + b"}"))


def test_a_batch_parses_in_order_up_to_the_first_refusal() -> None:
    first = seal(record())
    prev = json.loads(first)["hash"]
    second = seal(record(seq=2, prev_hash=prev, tenant_id=5))  # general path: not a string
    third = seal(record(seq=3, node_id="someone-else"))
    parsed = parse_lines(CHAIN, NODE, [first, second, third], time.time())
    assert parsed.seqs == [1, 2]
    assert parsed.refused is not None
    assert "seq 3 (line 3" in parsed.refused.message
    assert parsed.days == {int(1_796_000_000.25) // 86_400}


def test_the_compiled_parser_builds_the_rows_of_a_mixed_batch_as_python_does() -> None:
    """Lines the fast path takes, lines only the general path takes (so the compiled loop
    hands them back to Python), odd filter values, and the refusal that ends the batch."""
    lines: list[bytes] = []
    prev = GENESIS_HASH
    oddities: list[dict[str, Any]] = [
        {},
        {"tenant_id": 5},  # general path: not a string
        {"correlation_id": "x" * 300, "model": None},  # cut to its bound
        {"correlation_id": "a\x00b", "api_key_id": None},  # NUL dropped
        {"outcome": {"code": "\u00e9" * 70}},  # non-ASCII, over the outcome's bound
        {"cost": {"total_nanos": 2**63}, "ts": 1_796_000_000},  # beyond int64: no spend; int ts
        {"cost": {"total_nanos": 7}, "api_key_id": ""},  # the tenant's spend, no key
        {"routing": {"served_by": {"model": "m\u00e9"}}, "ts": 1_796_000_000.0000005},
        {"ts": 4_000_000_000.5},  # far ahead of receipt: stored at it
    ]
    for seq, change in enumerate(oddities, start=1):
        line = seal(record(seq=seq, prev_hash=prev, **change))
        lines.append(line if seq % 2 else line[:-1])
        prev = json.loads(line)["hash"]
    parsed = same_parse(lines, time.time())
    assert parsed.seqs == list(range(1, len(oddities) + 1))
    assert parsed.refused is None
    assert parsed.spends[0][:3] == (TENANT, KEY, 920)
    assert parsed.spends[6][:3] == (TENANT, "", 7)
    assert 5 not in parsed.spends
    big = seal(record(seq=len(oddities) + 1, prev_hash=prev, usage={"pad": "x" * records.MAX_RECORD_BYTES}))
    refused = same_parse([*lines, big, lines[0]], time.time()).refused
    assert refused is not None
    assert "bytes, at most" in refused.message


def test_the_compiled_parser_takes_a_normal_record_without_python() -> None:
    """The fast path is the point of compiling: a well-formed line never reaches the general one."""
    assert records._rows is not None
    handed_back: list[int] = []

    def slow(line: bytes, line_no: int) -> Any:
        handed_back.append(line_no)
        return batch.slow(line, line_no)

    first = seal(record())
    second = seal(record(seq=2, prev_hash=json.loads(first)["hash"], tenant_id=5))
    batch = _Batch(CHAIN, NODE, time.time())
    out = records._rows.parse(
        batch, [first, second[:-1]], records.read_fields, hashlib.sha256, slow, records._str, records._LIMITS
    )
    assert out[0] == [1, 2]
    assert handed_back == [2]
