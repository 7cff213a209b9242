"""A pack's keys and certificates are the pack author's words: one whose key type or curve the
cryptography library does not know (an OID changed to one nobody assigned) is an invalid pack
naming its line, not an ``UnsupportedAlgorithm`` out of ``signalbox evidence verify`` (and an
INTERNAL out of the Admin API's ImportEvidence, which verifies with the same code).

Found by mutating node packs byte by byte: one mutation in ~800 landed on such an OID."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.identity.ca import NodeCaKey, NodeCertificateSpec, new_ca
from dataplane.evidence import node_pack, pack_verify
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.pack import PackInvalid
from tests.fixtures.unknown_keys import EC_PUBLIC_KEY, P256, UNKNOWN_CURVE, UNKNOWN_KEY_TYPE, pem_of, resigned

NODE = "vault-1"


async def exported(tmp_path: Path, key: ec.EllipticCurvePrivateKey, ca: NodeCaKey | None = None) -> Path:
    """A node pack of three records by ``key``, certified by ``ca`` if given."""
    data_dir = tmp_path / "data"
    async with EvidenceLog(log_path(data_dir, NODE), NODE, signer=key) as log:
        for i in range(3):
            log.append({"ts": time.time(), "correlation_id": f"c-{i}", "tenant_id": "acme"})
    out = tmp_path / "node.pack"
    if ca is None:
        node_pack.export(data_dir, out, key=key)
    else:
        issued = ca.issue_node(NodeCertificateSpec(NODE, "vault"), key.public_key(), timedelta(days=1))
        node_pack.export(data_dir, out, key=key, certificate=issued.certificate, ca_pem=ca.pem.decode())
    pack_verify.verify(out, {})  # intact, it verifies
    return out


def replace_pem(path: Path, old: str, new: str) -> None:
    """``old`` PEM text swapped for ``new`` in the pack's certificates line (JSON-escaped)."""
    data = path.read_bytes()
    escaped_old, escaped_new = (json.dumps(p)[1:-1].encode() for p in (old, new))
    assert data.count(escaped_old) == 1
    path.write_bytes(data.replace(escaped_old, escaped_new))


async def test_a_bare_node_key_on_an_unknown_curve_is_an_invalid_pack(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = await exported(tmp_path, key)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    replace_pem(path, pem.decode(), pem_of(der.replace(P256, UNKNOWN_CURVE), "PUBLIC KEY"))
    with pytest.raises(PackInvalid, match=r"^line 2: node 'vault-1': the public key is not an ECDSA key$"):
        pack_verify.verify(path, {})


async def test_a_node_ca_of_an_unknown_key_type_is_an_invalid_pack(tmp_path: Path) -> None:
    ca = new_ca()
    path = await exported(tmp_path, ec.generate_private_key(ec.SECP256R1()), ca)
    der = ca.certificate.public_bytes(serialization.Encoding.DER)
    assert der.count(EC_PUBLIC_KEY) == 1
    replace_pem(path, ca.pem.decode(), pem_of(der.replace(EC_PUBLIC_KEY, UNKNOWN_KEY_TYPE), "CERTIFICATE"))
    with pytest.raises(
        PackInvalid, match=r"the node CA's key or the certificate's signature is of an unsupported"
    ):
        pack_verify.verify(path, {})


async def test_a_node_certificate_for_a_key_on_an_unknown_curve_is_an_invalid_pack(tmp_path: Path) -> None:
    """The pack's node CA is the pack author's: it can issue whatever it likes. Its certificate
    verified, and reading its key for the seal raised."""
    ca = new_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    path = await exported(tmp_path, key, ca)
    issued = ca.issue_node(NodeCertificateSpec(NODE, "vault"), key.public_key(), timedelta(days=1))
    forged = resigned(issued.certificate, ca.private_key, P256, UNKNOWN_CURVE)
    original = next(line for line in path.read_text().splitlines() if "BEGIN CERTIFICATE" in line)
    node_pem = json.loads(original)["nodes"][NODE][0]
    replace_pem(path, node_pem, pem_of(forged, "CERTIFICATE"))
    with pytest.raises(PackInvalid, match=r"the node certificate's key is of an unsupported kind"):
        pack_verify.verify(path, {})
