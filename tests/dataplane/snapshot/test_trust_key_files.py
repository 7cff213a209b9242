"""``--trust-key`` files are read as what they claim to be: an Ed25519 public key, or a refusal
naming the file (``ValueError``, which the node's start and ``signalbox evidence verify`` print
as one line), whatever kind of key or curve the file holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.snapshot.envelope import key_id_for, load_trust_keys
from tests.fixtures.unknown_keys import P256, UNKNOWN_CURVE, pem_of


def test_an_ed25519_key_is_read_by_its_key_id(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    path = tmp_path / "trust.pub"
    path.write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert list(load_trust_keys([path])) == [key_id_for(key)]


def test_a_key_of_another_kind_is_refused_naming_the_file(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "p256.pub"
    path.write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match=rf"^trust key {path}: not an Ed25519 public key$"):
        load_trust_keys([path])


def test_a_key_on_a_curve_the_library_does_not_know_is_refused_naming_the_file(tmp_path: Path) -> None:
    """cryptography raises UnsupportedAlgorithm, which is no ValueError: the node's start and
    ``signalbox evidence verify`` ended in a traceback."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "unknown-curve.pub"
    path.write_text(pem_of(der.replace(P256, UNKNOWN_CURVE), "PUBLIC KEY"))
    with pytest.raises(ValueError, match=rf"^trust key {path}: not an Ed25519 public key$"):
        load_trust_keys([path])
