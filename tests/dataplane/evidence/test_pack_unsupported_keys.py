"""A pack's keys and certificates are the pack author's words: one whose key type or curve the
cryptography library does not know (an OID changed to one nobody assigned) is an invalid pack
naming its line, not an ``UnsupportedAlgorithm`` out of ``signalbox evidence verify`` (and an
INTERNAL out of the Admin API's ImportEvidence, which verifies with the same code).

Found by mutating node packs byte by byte: one mutation in ~800 landed on such an OID."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.identity.ca import NodeCaKey, NodeCertificateSpec, new_ca
from dataplane.evidence import node_pack, pack_verify
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.pack import PackInvalid

NODE = "vault-1"
P256 = bytes.fromhex("06082a8648ce3d030107")
"""The DER of secp256r1's OID, in every P-256 public key."""
UNKNOWN_CURVE = bytes.fromhex("06082a8648ce3d030163")
"""1.2.840.10045.3.1.99: no curve."""
EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")
"""The DER of id-ecPublicKey's OID, the key type of every EC public key."""
UNKNOWN_KEY_TYPE = bytes.fromhex("06072a8648ce3d0263")


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


def pem_of(der: bytes, label: str) -> str:
    text = base64.b64encode(der).decode()
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def der_length(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else bytes([0x82, n >> 8, n & 0xFF])


def resigned(cert: x509.Certificate, ca: NodeCaKey, old: bytes, new: bytes) -> bytes:
    """``cert``'s DER with ``old`` changed to ``new`` in what it signs, signed again by ``ca``: a
    certificate the pack's node CA really issued, for a key of a curve nobody knows."""
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(old) == 1
    tbs = tbs.replace(old, new)
    signature = ca.private_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256
    bits = b"\x03" + der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs + algorithm + bits
    return b"\x30" + der_length(len(body)) + body


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
    forged = resigned(issued.certificate, ca, P256, UNKNOWN_CURVE)
    original = next(line for line in path.read_text().splitlines() if "BEGIN CERTIFICATE" in line)
    node_pem = json.loads(original)["nodes"][NODE][0]
    replace_pem(path, node_pem, pem_of(forged, "CERTIFICATE"))
    with pytest.raises(PackInvalid, match=r"the node certificate's key is of an unsupported kind"):
        pack_verify.verify(path, {})
