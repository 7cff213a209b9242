"""The node CA: an ECDSA P-256 key and self-signed certificate that issue node certificates.

Generated on a control plane's first start and stored in the database (one row, so every
replica on the database issues and trusts the same CA), its private key sealed with the
KEK exactly like the snapshot signing keys. A node certificate binds, as SAN URIs::

    urn:signalbox:node:<id>   urn:signalbox:group:<group>
    urn:signalbox:mode:<mode> urn:signalbox:site:<site>     (mode and site when set)

(each value percent-encoded). The subject CN is the node id (cut to the 64 characters
X.509 allows; the URI carries the whole id). What a certificate *means* is decided by the
``node_certificates`` row of its serial, never by the certificate's text alone.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_der_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import NodeCa
from controlplane.db.session import database_now
from controlplane.errors import InvalidArgument, SigningKeyUnavailable
from controlplane.keys import Kek
from dataplane.identity import urn

CA_KEY_AAD = b"signalbox-node-ca"
CA_LIFETIME = timedelta(days=3650)
SERVER_CERT_LIFETIME = timedelta(days=365)
NODE_CLOCK_SKEW = timedelta(hours=1)
"""How far behind the database's clock a node certificate is dated (a tenth of its lifetime
at most): a replica or a node whose clock is that far behind still takes it as in force."""
SERVER_CLOCK_SKEW = timedelta(days=1)
"""How far behind the database's clock the node port's server certificate and the node CA are
dated (they live for years): a node whose clock is that far behind still completes the TLS
handshake. Dated a minute back, a node one minute behind failed every handshake after a
control-plane restart (a fresh server certificate) until its clock caught up."""
MAX_CSR_BYTES = 16 * 1024
CN_CHARS = 64
KEY_TYPES = "key must be ECDSA P-256 (node evidence is signed with it)"

NodePublicKey = ec.EllipticCurvePublicKey
"""A node's key is ECDSA P-256: it signs the node's evidence checkpoints, which the control
plane and ``evidence verify`` check as ECDSA P-256 signatures with the certificate's key.
An Ed25519 certificate (accepted once) authenticated the node but could never certify a
checkpoint: every one it shipped was refused."""


def _name(cn: str) -> x509.Name:
    # X.509 caps a common name at 64 UTF-8 bytes (cryptography refuses more), not 64
    # characters: a node id of 33 non-ASCII characters failed issue with a ValueError, so
    # Enroll and CertifyNode answered INTERNAL. The id a certificate binds is its SAN URN;
    # the common name is a label, clipped here on a character boundary.
    clipped = cn.encode("utf-8", "surrogatepass")[:CN_CHARS].decode("utf-8", "ignore")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, clipped)])


def fingerprint(certificate: x509.Certificate) -> bytes:
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()


def serial_hex(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def parse_csr(pem: str) -> NodePublicKey:
    """The public key of a PKCS#10 request whose signature verifies; ECDSA P-256 only."""
    if not pem:
        raise InvalidArgument("csr_pem", "must not be empty")
    if len(pem) > MAX_CSR_BYTES:
        raise InvalidArgument("csr_pem", f"at most {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidArgument("csr_pem", "not a PEM certificate signing request") from exc
    try:
        key = csr.public_key()
        valid = csr.is_signature_valid
    except UnsupportedAlgorithm as exc:
        # A key on a curve the library does not know (SM2, ...): not a crash (INTERNAL).
        raise InvalidArgument("csr_pem", KEY_TYPES) from exc
    except (ValueError, x509.UnsupportedGeneralNameType, TypeError) as exc:
        raise InvalidArgument("csr_pem", "the request cannot be read") from exc
    if not valid:
        raise InvalidArgument("csr_pem", "signature does not verify with the request's key")
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise InvalidArgument("csr_pem", KEY_TYPES)


@dataclass(frozen=True, slots=True)
class NodeCertificateSpec:
    """What a node certificate binds."""

    node_id: str
    group: str
    mode: str = ""
    site: str = ""


@dataclass(frozen=True, slots=True)
class Issued:
    certificate: x509.Certificate

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(Encoding.PEM).decode()

    @property
    def serial(self) -> str:
        return serial_hex(self.certificate)

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def sha256(self) -> bytes:
        return fingerprint(self.certificate)


def _backdate(ttl: timedelta) -> timedelta:
    # Slack for clocks behind the database's, but never more than a tenth of the lifetime:
    # renewal at two thirds must still come well before the expiry.
    return min(NODE_CLOCK_SKEW, ttl / 10)


@dataclass(frozen=True, slots=True)
class NodeCaKey:
    """The node CA, unsealed in memory."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(Encoding.PEM)

    def _builder(
        self,
        subject: str,
        public_key: NodePublicKey,
        ttl: timedelta,
        now: datetime | None = None,
        backdate: timedelta | None = None,
    ) -> x509.CertificateBuilder:
        now = now or datetime.now(UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.private_key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - (_backdate(ttl) if backdate is None else backdate))
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
        )

    def issue_node(
        self,
        spec: NodeCertificateSpec,
        public_key: NodePublicKey,
        ttl: timedelta,
        now: datetime | None = None,
    ) -> Issued:
        """A certificate valid from ``now`` for ``ttl``: the database's clock, which
        ``IdentityService`` passes (this host's when not given)."""
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(urn("node", spec.node_id)),
            x509.UniformResourceIdentifier(urn("group", spec.group)),
        ]
        if spec.mode:
            names.append(x509.UniformResourceIdentifier(urn("mode", spec.mode)))
        if spec.site:
            names.append(x509.UniformResourceIdentifier(urn("site", spec.site)))
        cert = (
            self._builder(spec.node_id, public_key, ttl, now)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.private_key, hashes.SHA256())
        )
        return Issued(cert)

    def issue_server(self, hosts: Sequence[str], now: datetime | None = None) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) of a fresh server key for the node port, valid
        from ``SERVER_CLOCK_SKEW`` before ``now`` (the database's clock; this host's when not
        given)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(h.strip() for h in hosts if h.strip()):
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                names.append(x509.DNSName(host))
                continue
            if not address.is_unspecified:
                names.append(x509.IPAddress(address))
        cert = (
            self._builder(
                "signalbox control plane (node port)",
                key.public_key(),
                SERVER_CERT_LIFETIME,
                now,
                SERVER_CLOCK_SKEW,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.private_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        return cert.public_bytes(Encoding.PEM), key_pem


def new_ca(now: datetime | None = None) -> NodeCaKey:
    """A fresh node CA, valid from ``SERVER_CLOCK_SKEW`` before ``now`` (this host's clock
    when not given): a node checks the CA's validity at every handshake too."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or datetime.now(UTC)
    name = _name("signalbox node CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SERVER_CLOCK_SKEW)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return NodeCaKey(cert, key)


def _seal(ca: NodeCaKey, kek: Kek) -> bytes:
    der = ca.private_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    return kek.seal(der, CA_KEY_AAD)


def _unseal(row: NodeCa, kek: Kek) -> NodeCaKey:
    if row.kek_id != kek.id:
        raise SigningKeyUnavailable(
            f"the node CA key was sealed with KEK {row.kek_id}, but the configured KEK is {kek.id}"
        )
    try:
        der = kek.unseal(bytes(row.encrypted_private_key), CA_KEY_AAD)
    except InvalidTag as exc:
        raise SigningKeyUnavailable("the node CA key cannot be decrypted with the KEK") from exc
    key = load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SigningKeyUnavailable("the stored node CA key is not an ECDSA key")
    return NodeCaKey(x509.load_pem_x509_certificate(row.certificate_pem.encode()), key)


async def ensure_node_ca(session: AsyncSession, kek: Kek) -> NodeCaKey:
    """The node CA, generated on first start (dated by the database's clock); replicas
    starting at once agree on one."""
    candidate = new_ca(await database_now(session))
    await session.execute(
        insert(NodeCa)
        .values(
            id=1,
            certificate_pem=candidate.pem.decode(),
            encrypted_private_key=_seal(candidate, kek),
            kek_id=kek.id,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    row = await session.scalar(select(NodeCa).where(NodeCa.id == 1))
    assert row is not None
    return _unseal(row, kek)


async def reseal_node_ca(session: AsyncSession, old: Kek, new: Kek) -> bool:
    """Re-seal the node CA key under ``new`` (in the caller's transaction); False when there is none."""
    row = await session.scalar(select(NodeCa).where(NodeCa.id == 1).with_for_update())
    if row is None or row.kek_id == new.id:
        return False
    ca = _unseal(row, old)
    row.encrypted_private_key = _seal(ca, new)
    row.kek_id = new.id
    await session.flush()
    return True
