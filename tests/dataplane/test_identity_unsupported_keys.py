"""A node certificate or node CA whose key is of a type or on a curve the cryptography library
does not know (an OID nobody assigned) is one that cannot be used: ``identity install`` refuses
the bundle naming why, and the node's identity check reports a problem. cryptography raises
``UnsupportedAlgorithm`` there, no ValueError: both were tracebacks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from controlplane.identity.ca import NodeCertificateSpec, new_ca
from dataplane.identity import IdentityFiles, NodeIdentityError, install_bundle
from tests.fixtures.unknown_keys import EC_PUBLIC_KEY, P256, UNKNOWN_CURVE, UNKNOWN_KEY_TYPE, pem_of, resigned

NODE = "vault-1"


def bundle_parts(files: IdentityFiles, damaged: str) -> tuple[bytes, bytes]:
    """(certificate PEM, node CA PEM) for this node's key; ``damaged`` says which one holds a
    key the library does not know: ``cert`` (re-signed by the CA: it really issued it) or ``ca``."""
    ca = new_ca()
    issued = ca.issue_node(
        NodeCertificateSpec(NODE, "vault"), files.private_key().public_key(), timedelta(days=1)
    )
    cert_pem, ca_pem = issued.pem.encode(), ca.pem
    if damaged == "cert":
        cert_pem = pem_of(
            resigned(issued.certificate, ca.private_key, P256, UNKNOWN_CURVE), "CERTIFICATE"
        ).encode()
    else:
        der = ca.certificate.public_bytes(serialization.Encoding.DER)
        ca_pem = pem_of(der.replace(EC_PUBLIC_KEY, UNKNOWN_KEY_TYPE), "CERTIFICATE").encode()
    return cert_pem, ca_pem


@pytest.mark.parametrize(
    ("damaged", "refusal", "problem"),
    [
        ("cert", "the certificate is for another key than", "the node certificate does not match {key}"),
        (
            "ca",
            "the bundle's certificate was not issued by the bundle's node CA",
            "{cert} was not issued by the CA in {ca}",
        ),
    ],
)
def test_a_key_of_an_unknown_kind_is_refused_at_install_and_reported_when_stored(
    tmp_path: Path, damaged: str, refusal: str, problem: str
) -> None:
    files = IdentityFiles.under(tmp_path / "node")
    cert_pem, ca_pem = bundle_parts(files, damaged)
    with pytest.raises(NodeIdentityError, match=refusal):
        install_bundle(files, cert_pem + ca_pem, NODE)
    assert not files.cert.exists()
    # The same files put there by hand: the node's identity check (its start, identity show).
    files.cert.write_bytes(cert_pem)
    files.ca.write_bytes(ca_pem)
    assert files.problem(NODE) == problem.format(key=files.key, cert=files.cert, ca=files.ca)
