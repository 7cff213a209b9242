"""The bytes of a record: the hash is over the stored line, the hash member last."""

from __future__ import annotations

import json

from dataplane.evidence.records import hash_of_line, record_hash, seal


def test_a_record_hash_is_over_the_stored_bytes_with_the_hash_member_last() -> None:
    line = seal({"seq": 1, "text": "\u00e9t\u00e9", "hash": "ignored"})
    stated = json.loads(line)["hash"]
    assert hash_of_line(line) == stated == record_hash(json.loads(line))
    assert hash_of_line(line[:-1]) == stated  # the newline is not hashed
    # The same JSON value in other bytes (keys reordered, ASCII escapes, a space) is another hash.
    reordered = json.dumps({"text": "\u00e9t\u00e9", "seq": 1}, separators=(",", ":"), ensure_ascii=False)
    for other in (
        reordered.encode(),
        b'{"seq":1,"text":"\\u00e9t\\u00e9"}',
        b'{"seq": 1,"text":"\xc3\xa9t\xc3\xa9"}',
    ):
        assert hash_of_line(other[:-1] + b',"hash":"' + stated.encode() + b'"}\n') != stated
    # A line whose last member is not the hash is not a record line.
    assert hash_of_line(b'{"hash":"' + stated.encode() + b'","seq":1}\n') is None
    assert hash_of_line(b'{"seq":1,"hash":"' + stated.upper().encode() + b'"}\n') is None
    assert hash_of_line(b"") is None
