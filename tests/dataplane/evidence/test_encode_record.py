"""The record body the node hashes: canonical JSON written fast, read back as written."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.evidence.records import canonical, encode_record, hash_of_line, seal

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _keys_sorted(value: Any) -> bool:
    if isinstance(value, dict):
        keys = list(value)
        return keys == sorted(keys) and all(_keys_sorted(v) for v in value.values())
    if isinstance(value, list):
        return all(_keys_sorted(v) for v in value)
    return True


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), JSON_VALUES, min_size=1, max_size=8))
def test_a_record_reads_back_as_it_was_with_its_keys_sorted(record: dict[str, Any]) -> None:
    body = encode_record(record)
    assert json.loads(body) == record
    assert _keys_sorted(json.loads(body, object_pairs_hook=dict))
    line = seal(record)
    assert hash_of_line(line) == json.loads(line)["hash"]


def test_the_bytes_are_json_dumps_canonical_for_what_records_hold() -> None:
    record = {
        "seq": 7,
        "ts": 1_796_000_000.123456,
        "tenant_id": "acmé",
        "routing": {"served_by": {"model": "small"}, "candidates": ["b", "a"]},
        "usage": {"input_tokens": 12},
        "timings": {"total_ms": 13.1, "first_chunk_ms": None},
        "flag": True,
    }
    assert encode_record(record) == canonical(record)


def test_what_orjson_refuses_falls_back_and_nan_is_never_written() -> None:
    big = {"n": 2**70, "k": "v"}
    assert json.loads(encode_record(big)) == big
    assert json.loads(encode_record({"x": math.nan})) == {"x": None}
