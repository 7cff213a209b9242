"""The node's trust set: keys are learned only from statements verified by trusted keys,
revocation is for good, and the persisted statements are verified again on load."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataplane.errors import EnvelopeError, SnapshotFileInvalid
from dataplane.snapshot.envelope import SNAPSHOT_PAYLOAD_TYPE, STATEMENT_PAYLOAD_TYPE, key_id_for, pae, verify
from dataplane.snapshot.trust import TRUST_FILE, TrustSet, TrustState, walk_chain
from signalbox.api.config.v1 import snapshot_pb2

ACTIVE = snapshot_pb2.TRUSTED_KEY_STATE_ACTIVE
RETIRING = snapshot_pb2.TRUSTED_KEY_STATE_RETIRING
REVOKED = snapshot_pb2.TRUSTED_KEY_STATE_REVOKED


def _id(key: Ed25519PrivateKey) -> str:
    return key_id_for(key.public_key())


def _statement(
    version: int, named: list[tuple[Ed25519PrivateKey, int]], *signers: Ed25519PrivateKey
) -> snapshot_pb2.SignedEnvelope:
    snapshot = snapshot_pb2.Snapshot(version=version)
    for key, state in named:
        snapshot.trusted_keys.add(
            key_id=_id(key),
            ed25519_public_key=key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            state=state,  # type: ignore[arg-type]
        )
    payload = snapshot.SerializeToString(deterministic=True)
    envelope = snapshot_pb2.SignedEnvelope(payload_type=SNAPSHOT_PAYLOAD_TYPE, payload=payload)
    for key in signers:
        envelope.signatures.add(key_id=_id(key), sig=key.sign(pae(SNAPSHOT_PAYLOAD_TYPE, payload)))
    return envelope


def test_a_chain_of_rotations_is_learned_persisted_and_replayed(tmp_path: Path) -> None:
    k0, k1, k2 = (Ed25519PrivateKey.generate() for _ in range(3))
    trust = TrustSet({_id(k0): k0.public_key()}, tmp_path)
    assert trust.learn(_statement(1, [(k0, RETIRING), (k1, ACTIVE)], k1, k0))
    assert set(trust.state.keys) == {_id(k0), _id(k1)}
    # Signed by k1 only (k0 revoked): the node trusts k1 because k0 vouched for it.
    assert trust.learn(_statement(2, [(k0, REVOKED), (k1, RETIRING), (k2, ACTIVE)], k2, k1))
    assert set(trust.state.keys) == {_id(k1), _id(k2)}
    assert trust.state.revoked == {_id(k0)}
    assert not trust.learn(_statement(3, [(k0, REVOKED), (k1, RETIRING), (k2, ACTIVE)], k1))
    # No statement brings a revoked key back.
    assert not trust.learn(_statement(4, [(k0, ACTIVE), (k1, RETIRING), (k2, ACTIVE)], k1))
    assert _id(k0) not in trust.state.keys

    path = tmp_path / TRUST_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(json.loads(path.read_bytes())["statements"]) == 2
    again = TrustSet({_id(k0): k0.public_key()}, tmp_path)
    assert again.state == trust.state
    # Without the key the chain starts from, nothing in the file is trusted.
    with pytest.raises(SnapshotFileInvalid, match="statement 0"):
        TrustSet({_id(k2): k2.public_key()}, tmp_path)


def test_a_statement_is_compacted_when_the_operator_keys_alone_verify_it(tmp_path: Path) -> None:
    k0, k1, k2 = (Ed25519PrivateKey.generate() for _ in range(3))
    trust = TrustSet({_id(k0): k0.public_key()}, tmp_path)
    trust.learn(_statement(1, [(k0, ACTIVE), (k1, ACTIVE)], k0))
    trust.learn(_statement(2, [(k0, ACTIVE), (k1, ACTIVE), (k2, ACTIVE)], k0))
    assert len(json.loads((tmp_path / TRUST_FILE).read_bytes())["statements"]) == 1
    assert set(TrustSet({_id(k0): k0.public_key()}, tmp_path).state.keys) == {_id(k0), _id(k1), _id(k2)}


def test_an_edited_trust_file_refuses_to_load(tmp_path: Path) -> None:
    k0, k1, intruder = (Ed25519PrivateKey.generate() for _ in range(3))
    TrustSet({_id(k0): k0.public_key()}, tmp_path).learn(_statement(1, [(k1, ACTIVE)], k0))
    path = tmp_path / TRUST_FILE
    # A statement by an untrusted key appended to the file does not make its key trusted.
    forged = _statement(2, [(intruder, ACTIVE)], intruder)
    data = json.loads(path.read_bytes())
    data["statements"].append(base64.b64encode(forged.SerializeToString()).decode())
    path.write_text(json.dumps(data))
    with pytest.raises(SnapshotFileInvalid, match="statement 1: no signature by a trusted key"):
        TrustSet({_id(k0): k0.public_key()}, tmp_path)
    path.write_text("{not json")
    with pytest.raises(SnapshotFileInvalid, match="not JSON"):
        TrustSet({_id(k0): k0.public_key()}, tmp_path)


def test_bad_statements_change_nothing(tmp_path: Path) -> None:
    k0, k1, intruder = (Ed25519PrivateKey.generate() for _ in range(3))
    trust = TrustSet({_id(k0): k0.public_key()}, tmp_path)
    with pytest.raises(EnvelopeError, match="no signature by a trusted key"):
        trust.learn(_statement(1, [(intruder, ACTIVE)], intruder))
    mismatched = _statement(1, [(k1, ACTIVE)], k0)
    snapshot = snapshot_pb2.Snapshot.FromString(mismatched.payload)
    snapshot.trusted_keys[0].key_id = _id(intruder)
    payload = snapshot.SerializeToString()
    mismatched.payload = payload
    mismatched.signatures[0].sig = k0.sign(pae(SNAPSHOT_PAYLOAD_TYPE, payload))
    with pytest.raises(EnvelopeError, match=r"trusted_keys\[0\]: key id does not match"):
        trust.learn(mismatched)
    trust.learn(_statement(2, [(k0, REVOKED), (k1, ACTIVE)], k1, k0))
    with pytest.raises(EnvelopeError, match=f"signed only by revoked key {_id(k0)}"):
        trust.learn(_statement(3, [(k1, ACTIVE)], k0))
    assert set(trust.state.keys) == {_id(k1)}


def _trust_statement(
    named: list[tuple[Ed25519PrivateKey, int]], *signers: Ed25519PrivateKey
) -> snapshot_pb2.SignedEnvelope:
    statement = snapshot_pb2.TrustStatement(reason="test")
    for key, state in named:
        statement.trusted_keys.add(
            key_id=_id(key),
            ed25519_public_key=key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            state=state,  # type: ignore[arg-type]
        )
    payload = statement.SerializeToString(deterministic=True)
    envelope = snapshot_pb2.SignedEnvelope(payload_type=STATEMENT_PAYLOAD_TYPE, payload=payload)
    for key in signers:
        envelope.signatures.add(key_id=_id(key), sig=key.sign(pae(STATEMENT_PAYLOAD_TYPE, payload)))
    return envelope


def _carrying(*chain: snapshot_pb2.SignedEnvelope) -> snapshot_pb2.SignedEnvelope:
    envelope = snapshot_pb2.SignedEnvelope(payload_type=SNAPSHOT_PAYLOAD_TYPE, payload=b"")
    envelope.trust_chain.extend(chain)
    return envelope


def test_a_trust_chain_leads_from_the_old_key_through_rotation_and_revocation(tmp_path: Path) -> None:
    k0, k1 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    rotation = _trust_statement([(k0, RETIRING), (k1, ACTIVE)], k1, k0)
    revocation = _trust_statement([(k0, REVOKED), (k1, ACTIVE)], k1)
    operator = {_id(k0): k0.public_key()}

    walked = walk_chain(TrustState(operator, frozenset()), _carrying(rotation, revocation))
    assert set(walked.keys) == {_id(k1)}
    assert walked.revoked == {_id(k0)}

    trust = TrustSet(operator, tmp_path)
    assert trust.learn_chain(_carrying(rotation, revocation))
    assert set(trust.state.keys) == {_id(k1)}
    # Persisted, and replayed from the operator's key on the next start.
    again = TrustSet(operator, tmp_path)
    assert again.state.ids() == trust.state.ids()


def test_chain_statements_that_do_not_verify_add_nothing(tmp_path: Path) -> None:
    k0, k1, intruder = (Ed25519PrivateKey.generate() for _ in range(3))
    operator = {_id(k0): k0.public_key()}
    # Signed only by the key it introduces; out of order (revocation before rotation); a
    # statement's signature over a snapshot payload type; garbage.
    self_signed = _trust_statement([(intruder, ACTIVE)], intruder)
    revocation_first = _trust_statement([(k0, REVOKED), (k1, ACTIVE)], k1)
    wrong_type = _trust_statement([(intruder, ACTIVE)], k0)
    wrong_type.payload_type = SNAPSHOT_PAYLOAD_TYPE
    garbage = snapshot_pb2.SignedEnvelope(payload_type=STATEMENT_PAYLOAD_TYPE, payload=b"\xff\xff")
    garbage.signatures.add(key_id=_id(k0), sig=k0.sign(pae(STATEMENT_PAYLOAD_TYPE, b"\xff\xff")))
    chain = _carrying(self_signed, revocation_first, wrong_type, garbage)

    assert walk_chain(TrustState(operator, frozenset()), chain).ids() == (frozenset({_id(k0)}), frozenset())
    trust = TrustSet(operator, tmp_path)
    assert not trust.learn_chain(chain)
    assert not (tmp_path / TRUST_FILE).exists()


def test_a_trust_statement_is_never_accepted_as_a_snapshot() -> None:
    k0 = Ed25519PrivateKey.generate()
    statement = _trust_statement([(k0, ACTIVE)], k0)
    with pytest.raises(EnvelopeError, match="payload_type"):
        verify(statement, {_id(k0): k0.public_key()})
