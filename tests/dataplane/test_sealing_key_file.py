"""A node's sealing private key file (``--sealing-key``) is read as what it must be, an X25519
key, or refused by ``SealingError`` naming the file, which the node's start prints as one line."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dataplane.providers.sealing import SealingError, encode_private_key, load_private_key
from tests.fixtures.unknown_keys import P256, UNKNOWN_CURVE, pem_of


def test_an_x25519_key_is_read() -> None:
    key = X25519PrivateKey.generate()
    loaded = load_private_key(encode_private_key(key), "vault.key")
    assert loaded.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()


def test_text_that_is_no_key_is_refused_naming_the_file() -> None:
    with pytest.raises(SealingError, match=r"^vault\.key: not a PEM private key$"):
        load_private_key(b"not a key", "vault.key")


def test_a_key_on_a_curve_the_library_does_not_know_is_refused_naming_the_file() -> None:
    """cryptography raises UnsupportedAlgorithm, which is no ValueError: the node's start with
    such a ``--sealing-key`` ended in a traceback."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert der.count(P256) == 1
    with pytest.raises(SealingError, match=r"^vault\.key: not an X25519 key$"):
        load_private_key(pem_of(der.replace(P256, UNKNOWN_CURVE), "PRIVATE KEY").encode(), "vault.key")
