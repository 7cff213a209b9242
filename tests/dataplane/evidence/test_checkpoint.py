"""Signed checkpoints: the C2SP tlog-checkpoint body in a C2SP signed note, by the node key;
verification with the bare key or with a certificate from the node CA; hostile notes refused."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.identity.ca import NodeCertificateSpec, new_ca
from dataplane.evidence import checkpoint, merkle
from dataplane.identity import IdentityFiles

ROOT = hashlib.sha256(b"root").digest()


def test_the_note_has_the_c2sp_shape_and_verifies() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    note = checkpoint.sign(key, "node-a/0", 12, ROOT, 1_800_000_000)
    body, signature = note.decode().split("\n\n")
    assert body.split("\n") == [
        "signalbox.evidence/node-a/0",
        "12",
        base64.b64encode(ROOT).decode(),
        "time 1800000000",
    ]
    assert signature.startswith("\u2014 signalbox-node/node-a ")
    assert signature.endswith("\n")
    assert signature.count("\n") == 1
    blob = base64.b64decode(signature.split(" ")[2])
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert blob[:4] == hashlib.sha256(b"signalbox-node/node-a\n" + spki).digest()[:4]
    # The signature is plain DER ECDSA-SHA256 over the body, checkable without this module.
    key.public_key().verify(blob[4:], (body + "\n").encode(), ec.ECDSA(hashes.SHA256()))
    cp = checkpoint.verify(note, key.public_key())
    assert (cp.chain_id, cp.node_id, cp.size, cp.root, cp.time) == (
        "node-a/0",
        "node-a",
        12,
        ROOT,
        1_800_000_000,
    )


def _flip(note: bytes, old: bytes, new: bytes) -> bytes:
    assert old in note
    return note.replace(old, new, 1)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda n: _flip(n, b"\n12\n", b"\n13\n"), "does not verify"),
        (lambda n: _flip(n, b"time 1", b"time 2"), "does not verify"),
        (lambda n: _flip(n, b"node-a/0", b"node-b/0"), "no signature by signalbox-node/node-b"),
        (lambda n: n.replace(b"\n\n", b"\n"), "not a signed note"),
        (lambda n: _flip(n, b"\n12\n", b"\n012\n"), "size"),
        (lambda n: _flip(n, b"time ", b"tim "), "extension line"),
        (lambda n: n + b"x" * 5000, "more than"),
        (lambda n: _flip(n, b"\xe2\x80\x94 ", b"- "), "signature line"),
        # Text that is not ASCII: base64 raised a plain ValueError, no CheckpointInvalid, which
        # the pack verifier let out as a traceback.
        (
            lambda n: _flip(n, b"\n" + base64.b64encode(ROOT), "\né".encode()),
            "root hash is not standard base64",
        ),
        (
            lambda n: _flip(n, b"node/node-a ", "node/node-a é".encode()),
            "signature of .* is not standard base64",
        ),
    ],
)
def test_a_changed_note_is_refused_with_the_reason(tamper: object, message: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    note = checkpoint.sign(key, "node-a/0", 12, ROOT, 1_800_000_000)
    assert callable(tamper)
    with pytest.raises(checkpoint.CheckpointInvalid, match=message):
        checkpoint.verify(tamper(note), key.public_key())


def test_another_key_does_not_verify() -> None:
    note = checkpoint.sign(ec.generate_private_key(ec.SECP256R1()), "node-a/0", 1, ROOT, 1)
    with pytest.raises(checkpoint.CheckpointInvalid, match="no signature by signalbox-node/node-a"):
        checkpoint.verify(note, ec.generate_private_key(ec.SECP256R1()).public_key())


def test_bad_chain_ids_are_refused_before_signing() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for bad in ("", "no-worker", "node a/0"):
        with pytest.raises(checkpoint.CheckpointInvalid, match="chain id"):
            checkpoint.sign(key, bad, 1, ROOT, 1)


def test_verify_with_ca_needs_the_node_ca_and_the_node_id(tmp_path: Path) -> None:
    # The control plane's own node CA, issuing as it does at enrollment.
    ca, other_ca = new_ca(), new_ca()
    key = IdentityFiles(tmp_path / "identity").private_key()
    cert = ca.issue_node(NodeCertificateSpec("node-a", "g"), key.public_key(), timedelta(hours=1)).certificate
    note = checkpoint.sign(key, "node-a/0", 3, merkle.root([b"a", b"b", b"c"]), 5)
    assert checkpoint.verify_with_ca(note, cert, ca.certificate, "node-a").size == 3
    with pytest.raises(checkpoint.CheckpointInvalid, match="not issued by the given node CA"):
        checkpoint.verify_with_ca(note, cert, other_ca.certificate, "node-a")
    with pytest.raises(checkpoint.CheckpointInvalid, match="does not name node 'node-b'"):
        checkpoint.verify_with_ca(note, cert, ca.certificate, "node-b")
    other_node = checkpoint.sign(key, "node-b/0", 3, merkle.root([b"a"]), 5)
    with pytest.raises(checkpoint.CheckpointInvalid, match="checkpoint of node 'node-b', not of 'node-a'"):
        checkpoint.verify_with_ca(other_node, cert, ca.certificate, "node-a")


def test_split_keeps_complete_notes_and_finds_a_torn_tail() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    notes = [checkpoint.sign(key, "n/0", size, ROOT, 1) for size in (1, 2)]
    data = b"".join(n + b"\n" for n in notes)
    assert checkpoint.split(data) == (notes, len(data))
    for cut in range(1, len(notes[1]) + 1):
        torn = data[:-cut]
        assert checkpoint.split(torn) == (notes[:1], len(notes[0]) + 1)
