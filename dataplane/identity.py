"""The node's own identity: its key, its certificate from the node CA, enrollment and renewal.

Kept in ``<data_dir>/identity/`` (0700): ``node.key`` (ECDSA P-256, 0600, generated once
and never sent anywhere), ``node.crt`` (issued by the control plane's node CA) and
``ca.pem`` (that CA, pinned for the control plane's node port). At start a valid
certificate is used as is; otherwise the node enrolls with a one-time token over the
control plane's admin port. While running, ``CertificateRenewer`` renews over the mTLS
node port once two thirds of the certificate's lifetime have passed, writes the new
certificate atomically, and has the sync client reconnect with it.

The token is a credential: it is never logged, never put in an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import signalbox
from dataplane.files import read_regular
from dataplane.snapshot.files import atomic_write
from signalbox.api.config.v1 import identity_pb2, identity_pb2_grpc
from signalbox.tls import ClientTls, aio_channel
from signalbox.wallclock import RECHECK_SECONDS, seconds_until, sleep_until, utc_now

log = logging.getLogger("signalbox.dataplane.identity")

IDENTITY_DIR = "identity"
URN_PREFIX = "urn:signalbox:"
RPC_TIMEOUT = 15.0
RENEW_AT = 2 / 3
"""Fraction of a certificate's lifetime after which the node renews it."""


def urn(kind: str, value: str) -> str:
    """``urn:signalbox:<kind>:<value>`` as node certificates carry it (value percent-encoded)."""
    return f"{URN_PREFIX}{kind}:{quote(value, safe='')}"


def _clip_utf8(value: str, limit: int) -> str:
    """``value`` cut to at most ``limit`` UTF-8 bytes on a character boundary."""
    return value.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


MAX_KEY_BYTES = 64 * 1024
"""A node key, certificate or CA file larger than this is refused unread (each PEM is a
few hundred bytes to a few KB)."""


class NodeIdentityError(ValueError):
    """The node has no usable identity and cannot get one; the message says what to do."""


def _enroll_problem(exc: grpc.aio.AioRpcError, address: str) -> str:
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        return "the control plane rejected the enrollment token (unknown, used or expired): create a new one"
    return f"enrollment at {address} failed: {exc.code().name}: {(exc.details() or '')[:300]}"


@dataclass(frozen=True, slots=True)
class IdentityFiles:
    directory: Path

    @classmethod
    def under(cls, data_dir: Path) -> IdentityFiles:
        return cls(data_dir / IDENTITY_DIR)

    @property
    def key(self) -> Path:
        return self.directory / "node.key"

    @property
    def cert(self) -> Path:
        return self.directory / "node.crt"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def client_tls(self) -> ClientTls:
        """Mutual TLS to the node port: pin the node CA, present the node certificate."""
        return ClientTls(ca=self.ca, cert=self.cert, key=self.key)

    def refuse_links(self) -> None:
        """``NodeIdentityError`` when the identity directory, its certificate or its CA is a
        symbolic link (the key is opened without following one): the node's identity lives in
        a directory of its own, and the modes it fixes (0700, 0600) must never land on
        whatever a link points at."""
        for path in (self.directory, self.cert, self.ca):
            if path.is_symlink():
                raise NodeIdentityError(
                    f"{path}: a symbolic link; the node keeps its identity in a directory of its own "
                    f"(replace the link with the real {'directory' if path == self.directory else 'file'})"
                )

    def _private_directory(self) -> None:
        """The identity directory, created if needed and made 0700 through a handle opened
        without following a link (no link swapped in after the check gets the chmod)."""
        self.refuse_links()
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            self.directory.mkdir(mode=0o700)
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            why = "a symbolic link" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
            raise NodeIdentityError(
                f"{self.directory}: {why}; the node keeps its identity in a directory"
            ) from None
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The node's key, generated (0600, never overwritten) on first use."""
        self._private_directory()
        try:
            fd = os.open(self.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self._load_key()
        key = ec.generate_private_key(ec.SECP256R1())
        with os.fdopen(fd, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        return key

    def _load_key(self) -> ec.EllipticCurvePrivateKey:
        # Not followed if a symlink and without blocking (a FIFO): the mode is fixed on what
        # was opened, so no file outside this directory is changed, and only a bounded
        # regular file is read.
        move = "move it away to generate a new one"
        try:
            data = read_regular(self.key, MAX_KEY_BYTES, nofollow=True, mode=0o600)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EFBIG):
                problem = exc.strerror
            elif exc.errno == errno.ELOOP:
                problem = "a symbolic link"
            else:
                problem = f"unreadable ({exc.strerror})"
            raise NodeIdentityError(f"{self.key}: {problem}; {move}") from None
        try:
            loaded = serialization.load_pem_private_key(data, password=None)
        except TypeError:  # what cryptography raises for an encrypted key without a password
            raise NodeIdentityError(
                f"{self.key}: an encrypted private key; the node needs it unencrypted (0600)"
            ) from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise NodeIdentityError(
                f"{self.key}: not a PEM private key; move it away to generate a new one"
            ) from exc
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise NodeIdentityError(f"{self.key}: not an ECDSA key; move it away to generate a new one")
        return loaded

    def csr_pem(self, node_id: str) -> str:
        key = self.private_key()
        csr = (
            x509.CertificateSigningRequestBuilder()
            # X.509 caps a common name at 64 UTF-8 bytes, not characters: a non-ASCII id
            # clipped by characters made this raise. The CA ignores the CSR's subject anyway.
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, _clip_utf8(node_id, 64))]))
            .sign(key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    def ca_pem(self) -> bytes:
        """The node CA as stored (bounded, a regular file: never a wait on a FIFO)."""
        try:
            return read_regular(self.ca, MAX_KEY_BYTES, nofollow=True)
        except OSError as exc:
            raise NodeIdentityError(f"{self.ca}: cannot be read: {exc.strerror or exc}") from None

    def certificate(self) -> x509.Certificate | None:
        try:
            return x509.load_pem_x509_certificate(read_regular(self.cert, MAX_KEY_BYTES, nofollow=True))
        except (OSError, ValueError, x509.InvalidVersion):
            # InvalidVersion is no ValueError: a certificate whose version byte was damaged
            # made the node's start (and `identity show`) a traceback.
            return None

    def problem(self, node_id: str, now: datetime | None = None) -> str:
        """Why the stored certificate cannot be used ("" when it can); ``NodeIdentityError``
        when the identity is kept behind a symbolic link."""
        self.refuse_links()
        cert = self.certificate()
        if cert is None:
            return f"no node certificate in {self.directory}"
        try:
            ca = x509.load_pem_x509_certificate(read_regular(self.ca, MAX_KEY_BYTES, nofollow=True))
            cert.verify_directly_issued_by(ca)
        except (OSError, ValueError, TypeError, InvalidSignature, x509.InvalidVersion, UnsupportedAlgorithm):
            return f"{self.cert} was not issued by the CA in {self.ca}"
        now = now or datetime.now(UTC)
        if cert.not_valid_after_utc <= now:
            return f"the node certificate expired at {cert.not_valid_after_utc.isoformat()}"
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        if urn("node", node_id) not in uris:
            return f"the node certificate is for another node id (this node is {node_id!r})"
        if not self.key.exists():
            return f"the node key {self.key} is missing"
        if _public_key(cert) != self.private_key().public_key():
            return f"the node certificate does not match {self.key}"
        return ""

    def group(self) -> str | None:
        """The node group the stored certificate binds (None: no readable certificate)."""
        cert = self.certificate()
        if cert is None:
            return None
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return None
        prefix = urn("group", "")
        for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(prefix):
                return unquote(uri.removeprefix(prefix))
        return None

    def store(self, response: identity_pb2.NodeCertificate) -> x509.Certificate:
        """Write what the control plane issued: the CA first, then the certificate (atomic, 0600)."""
        try:
            cert = x509.load_pem_x509_certificate(response.certificate_pem.encode())
            x509.load_pem_x509_certificate(response.ca_pem.encode())
        except (ValueError, x509.InvalidVersion) as exc:
            raise NodeIdentityError("the control plane returned an unreadable certificate") from exc
        if _public_key(cert) != self.private_key().public_key():
            raise NodeIdentityError("the control plane returned a certificate for another key")
        self._private_directory()
        atomic_write(self.ca, response.ca_pem.encode())
        atomic_write(self.cert, response.certificate_pem.encode())
        return cert


MAX_BUNDLE_BYTES = 64 * 1024


def _public_key(cert: x509.Certificate) -> object:
    """``cert``'s public key; None when it is of a type or on a curve the library does not know
    (``UnsupportedAlgorithm``, no ValueError: a traceback where a key was compared)."""
    try:
        return cert.public_key()
    except UnsupportedAlgorithm:
        return None


def install_bundle(files: IdentityFiles, bundle: bytes, node_id: str) -> x509.Certificate:
    """Install a provisioning bundle (``signalbox admin node certify``: the node's
    certificate, then the node CA, PEM) after checking that the CA issued it, that it names
    ``node_id``, is in force and is for this node's key; nothing is written otherwise."""
    if len(bundle) > MAX_BUNDLE_BYTES:
        raise NodeIdentityError(f"the bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        certs = x509.load_pem_x509_certificates(bundle)
    except (ValueError, x509.InvalidVersion):
        raise NodeIdentityError("the bundle is not PEM certificates") from None
    if len(certs) != 2:
        raise NodeIdentityError(
            f"the bundle holds {len(certs)} certificates, not 2 (node certificate, node CA)"
        )
    cert, ca = certs
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise NodeIdentityError("the bundle's certificate was not issued by the bundle's node CA") from None
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise NodeIdentityError(
            f"the certificate is valid {cert.not_valid_before_utc.isoformat()} .. "
            f"{cert.not_valid_after_utc.isoformat()}, not now"
        )
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound:
        uris = []
    if urn("node", node_id) not in uris:
        raise NodeIdentityError(f"the certificate does not name node {node_id!r}")
    if not files.key.exists():
        raise NodeIdentityError(f"no node key in {files.directory}: run `dataplane identity request` first")
    if _public_key(cert) != files.private_key().public_key():
        raise NodeIdentityError(f"the certificate is for another key than {files.key}")
    pem = serialization.Encoding.PEM
    files.store(
        identity_pb2.NodeCertificate(
            certificate_pem=cert.public_bytes(pem).decode(), ca_pem=ca.public_bytes(pem).decode()
        )
    )
    return cert


async def enroll(
    files: IdentityFiles, *, address: str, tls: ClientTls, token: str, node_id: str
) -> x509.Certificate:
    """Exchange ``token`` and a CSR of the node's key for a certificate, and store it."""
    request = identity_pb2.EnrollRequest(
        token=token, csr_pem=files.csr_pem(node_id), node_id=node_id, software_version=signalbox.__version__
    )
    async with aio_channel(address, tls) as channel:
        try:
            response = await identity_pb2_grpc.NodeEnrollmentServiceStub(channel).Enroll(
                request, timeout=RPC_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            raise NodeIdentityError(_enroll_problem(exc, address)) from None
    cert = files.store(response)
    log.info("enrolled as %s; certificate valid until %s", node_id, cert.not_valid_after_utc.isoformat())
    return cert


def renew_at(cert: x509.Certificate) -> datetime:
    """When two thirds of ``cert``'s lifetime have passed."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * RENEW_AT


class CertificateRenewer:
    """Renews the node certificate over the node port before it runs out; runs until cancelled."""

    def __init__(
        self,
        files: IdentityFiles,
        *,
        target: str,
        node_id: str,
        on_renewed: Callable[[], None],
        retry_cap: float = 30.0,
        clock: Callable[[], datetime] = utc_now,
        recheck: float = RECHECK_SECONDS,
    ) -> None:
        """``clock``: the wall clock certificates are valid by; the wait for the renewal time
        reads it again every ``recheck`` seconds (``signalbox.wallclock``)."""
        self._files = files
        self._target = target
        self._node_id = node_id
        self._on_renewed = on_renewed
        self._retry_cap = retry_cap
        self._clock = clock
        self._recheck = recheck
        self.renewals = 0
        self.last_error = ""

    async def run(self) -> None:
        while True:
            cert = self._files.certificate()
            if cert is None:
                return
            await sleep_until(renew_at(cert), now=self._clock, recheck=self._recheck)
            try:
                await self.renew_once()
            except (grpc.aio.AioRpcError, NodeIdentityError) as exc:
                self.last_error = (
                    f"{exc.code().name}: {exc.details()}"
                    if isinstance(exc, grpc.aio.AioRpcError)
                    else str(exc)
                )
                left = seconds_until(cert.not_valid_after_utc, self._clock)
                log.warning("could not renew the node certificate (%s); %.0fs left", self.last_error, left)
                lifetime = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
                await asyncio.sleep(max(0.2, min(self._retry_cap, lifetime / 20)))

    async def renew_once(self) -> x509.Certificate:
        request = identity_pb2.RenewRequest(csr_pem=self._files.csr_pem(self._node_id))
        async with aio_channel(self._target, self._files.client_tls()) as channel:
            response = await identity_pb2_grpc.NodeIdentityServiceStub(channel).Renew(
                request, timeout=RPC_TIMEOUT
            )
        cert = self._files.store(response)
        self.renewals += 1
        self.last_error = ""
        log.info("node certificate renewed; valid until %s", cert.not_valid_after_utc.isoformat())
        self._on_renewed()
        return cert
