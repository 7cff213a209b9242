"""Envelope verification: trusted keys only, exact bytes, unknown signatures ignored."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.snapshot.envelope import EnvelopeError, key_id_for, verify
from tests.fixtures.keys import sign_payload


def _trust(*keys: Ed25519PrivateKey) -> dict[str, object]:
    return {key_id_for(k.public_key()): k.public_key() for k in keys}


def test_valid_signature_verifies(signing_key: Ed25519PrivateKey) -> None:
    env = sign_payload(b"payload", signing_key)
    assert verify(env, _trust(signing_key)) == key_id_for(signing_key.public_key())  # type: ignore[arg-type]


def test_tampered_payload_is_rejected(signing_key: Ed25519PrivateKey) -> None:
    env = sign_payload(b"payload", signing_key)
    env.payload = b"payloaD"
    with pytest.raises(EnvelopeError, match="verification failed"):
        verify(env, _trust(signing_key))  # type: ignore[arg-type]


def test_unknown_key_is_rejected(signing_key: Ed25519PrivateKey) -> None:
    env = sign_payload(b"payload", Ed25519PrivateKey.generate())
    with pytest.raises(EnvelopeError, match="no signature by a trusted key"):
        verify(env, _trust(signing_key))  # type: ignore[arg-type]


def test_unsigned_is_rejected(signing_key: Ed25519PrivateKey) -> None:
    env = sign_payload(b"payload")
    with pytest.raises(EnvelopeError, match="unsigned"):
        verify(env, _trust(signing_key))  # type: ignore[arg-type]


def test_unknown_signature_beside_a_trusted_one_is_ignored(signing_key: Ed25519PrivateKey) -> None:
    env = sign_payload(b"payload", Ed25519PrivateKey.generate(), signing_key)
    assert verify(env, _trust(signing_key)) == key_id_for(signing_key.public_key())  # type: ignore[arg-type]


def test_no_trust_keys_means_nothing_applies(signing_key: Ed25519PrivateKey) -> None:
    env = sign_payload(b"payload", signing_key)
    with pytest.raises(EnvelopeError, match="no trust key"):
        verify(env, {})
