"""Pruned-range statements as the offline verifier reads them: a well-formed one signed by a
trusted key gives its fields and the tree of the pruned records; every malformed field is a
ValueError naming it, and a signature by any other key, or over other bytes, is refused."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.evidence import merkle
from dataplane.evidence.pack import canonical, key_id_for, pae
from dataplane.evidence.pruned import (
    MAX_STATEMENT_BYTES,
    PRUNED_PAYLOAD_TYPE,
    decode_statement,
    verify_statement,
)

KEY = Ed25519PrivateKey.generate()
TRUSTED = {key_id_for(KEY.public_key()): KEY.public_key()}
HASHES = [hashlib.sha256(str(i).encode()).digest() for i in range(6)]


def _tree(n: int) -> merkle.Tree:
    tree = merkle.Tree()
    for digest in HASHES[:n]:
        tree.append(digest)
    return tree


def _body(**changes: Any) -> dict[str, Any]:
    body = {
        "chain_id": "node-a/0",
        "first_seq": 1,
        "last_seq": 6,
        "last_hash": HASHES[5].hex(),
        "compact_range": [{"height": h, "hash": d.hex()} for h, d in _tree(6)._stack],
        "checkpoint": "",
        "pruned_before": "2025-02-01T00:00:00+00:00",
        "at": "2026-11-30T03:00:00.123456+00:00",
    }
    return {**body, **changes}


def _envelope(body: Any, key: Ed25519PrivateKey = KEY) -> bytes:
    payload = canonical(body)
    sig = base64.b64encode(key.sign(pae(PRUNED_PAYLOAD_TYPE, payload))).decode()
    return json.dumps(
        {
            "payloadType": PRUNED_PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": key_id_for(key.public_key()), "sig": sig}],
        }
    ).encode()


def test_a_signed_statement_gives_its_fields_and_the_pruned_tree() -> None:
    statement = verify_statement(_envelope(_body()), TRUSTED)
    assert (statement.chain_id, statement.first_seq, statement.last_seq) == ("node-a/0", 1, 6)
    assert statement.last_hash == HASHES[5]
    tree = statement.tree()
    tree.append(b"next")
    expected = _tree(6)
    expected.append(b"next")
    assert tree.root() == expected.root()


@pytest.mark.parametrize(
    ("envelope", "problem"),
    [
        (b"not json", "the statement is not JSON"),
        (b"[]", "the statement is not a JSON object"),
        (b" " * (MAX_STATEMENT_BYTES + 1), "the statement is longer than"),
        (json.dumps({"payload": "***"}).encode(), "payload is not standard base64"),
        (_envelope(_body(chain_id="")), "chain_id must be a non-empty string"),
        (_envelope(_body(first_seq=0)), "first_seq must be an integer >= 1"),
        (_envelope(_body(last_seq="6")), "last_seq must be an integer >= 1"),
        (_envelope(_body(first_seq=7)), "last_seq 6 is before first_seq 7"),
        (_envelope(_body(last_hash="AB" * 32)), "last_hash must be 64 lowercase hex digits"),
        (_envelope(_body(last_seq=5)), "compact_range is not the subtrees of 5 records"),
        (
            _envelope(_body(compact_range=list(reversed(_body()["compact_range"])))),
            "compact_range heights must be integers 0..63, tallest first, distinct",
        ),
        (_envelope(_body(compact_range=[{"height": 2}])), "compact_range heights|a compact_range hash"),
        (_envelope(_body(checkpoint=None)), "checkpoint must be the note's text"),
        (_envelope(_body(at="2026-11-30T03:00:00")), "at must be an RFC 3339 time with a zone"),
        (_envelope(_body(pruned_before="soon")), "pruned_before must be an RFC 3339 time with a zone"),
    ],
)
def test_a_malformed_statement_names_its_field(envelope: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        decode_statement(envelope)


def test_only_a_trusted_key_over_the_exact_payload_verifies() -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ValueError, match="no signature by a trusted key verifies"):
        verify_statement(_envelope(_body(), other), TRUSTED)
    outer = json.loads(_envelope(_body()))
    outer["payload"] = base64.b64encode(canonical(_body(first_seq=2))).decode()
    with pytest.raises(ValueError, match="no signature by a trusted key verifies"):
        verify_statement(json.dumps(outer), TRUSTED)
    outer = json.loads(_envelope(_body()))
    outer["payloadType"] = "application/vnd.signalbox.evidence-pack.v1+json"
    with pytest.raises(ValueError, match="payload type is not"):
        verify_statement(json.dumps(outer), TRUSTED)
