"""Who is on the other end of a node-port call: the certificate decides, never the stream.

TLS has already verified the chain to the node CA and the validity period; here the
certificate's serial is looked up in ``node_certificates``: an unknown serial is
UNAUTHENTICATED, a revoked one PERMISSION_DENIED, and the node id, group, mode and site
are those recorded at issue. A certificate recorded without its PEM (issued before
migration 0015) gets it from the node that presents it, so evidence packs can carry it. With ``--insecure`` (plaintext node port, development only)
there is no certificate and ``authenticate`` returns None: the Hello says who it is.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from controlplane.errors import PermissionDenied, Unauthenticated
from controlplane.identity.ca import fingerprint, serial_hex
from controlplane.services.identity import IdentityService, NodeIdentity, identity_of

Context = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger(__name__)


class NodeAuthenticator:
    """Turns a call's peer certificate into a ``NodeIdentity``."""

    def __init__(self, identities: IdentityService, *, require_certificate: bool = True) -> None:
        self._identities = identities
        self.require_certificate = require_certificate

    async def authenticate(self, context: Context) -> NodeIdentity | None:
        """The caller's identity; None only on an insecure node port. Raises ``Unauthenticated``
        or ``PermissionDenied`` (statuses via ``controlplane.api.status``)."""
        pem = list((context.auth_context() or {}).get("x509_pem_cert", ()))
        if not pem:
            if not self.require_certificate:
                return None
            raise Unauthenticated("a node certificate is required on this port")
        try:
            certificate = x509.load_pem_x509_certificate(pem[0])
        except ValueError as exc:
            raise Unauthenticated("the node certificate cannot be read") from exc
        serial = serial_hex(certificate)
        row = await self._identities.certificate(serial)
        if row is None or bytes(row.sha256) != fingerprint(certificate):
            raise Unauthenticated(f"certificate {serial} was not issued by this control plane")
        if row.revoked_at is not None:
            raise PermissionDenied(f"certificate {serial} of node {row.node_id} is revoked")
        if row.not_after <= datetime.now(UTC):
            raise Unauthenticated(f"certificate {serial} expired at {row.not_after.isoformat()}")
        if not row.certificate_pem:
            # Issued before migration 0015 kept certificates: the node presents it, and its
            # fingerprint matched the issue record, so this is the certificate itself.
            issued = certificate.public_bytes(Encoding.PEM).decode()
            if await self._identities.fill_certificate_pem(serial, issued):
                log.info("node %s: certificate %s's PEM kept (issued before 0015)", row.node_id, serial)
        key = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return replace(identity_of(row), public_key=key)

    async def revoked_since(self, identity: NodeIdentity) -> bool:
        """Whether the certificate ``identity`` came from has been revoked meanwhile."""
        if not identity.serial:
            return False
        row = await self._identities.certificate(identity.serial)
        return row is None or row.revoked_at is not None
