"""NodeEnrollmentService (admin port, the token is the credential) and NodeIdentityService
(node port, the certificate is). Errors become statuses in ``controlplane.api.status``."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from controlplane.api.node_auth import Context, NodeAuthenticator
from controlplane.api.status import status_for
from controlplane.errors import Unauthenticated
from controlplane.identity.ca import Issued, NodeCaKey
from controlplane.services.identity import IdentityService
from dataplane.connection_front import peer_of
from signalbox.api.config.v1 import identity_pb2, identity_pb2_grpc

log = logging.getLogger(__name__)


def certificate_response(issued: Issued, ca: NodeCaKey) -> identity_pb2.NodeCertificate:
    response = identity_pb2.NodeCertificate(
        certificate_pem=issued.pem, ca_pem=ca.pem.decode(), serial=issued.serial
    )
    response.not_after.FromDatetime(issued.not_after)
    return response


async def _abort(context: Context, exc: Exception, what: str) -> Any:
    mapped = status_for(exc)
    if mapped is None:
        log.exception("%s failed unexpectedly", what)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    else:
        await context.abort(*mapped)


class NodeEnrollmentServicer(identity_pb2_grpc.NodeEnrollmentServiceServicer):
    def __init__(self, identities: IdentityService) -> None:
        self._identities = identities

    async def Enroll(
        self, request: identity_pb2.EnrollRequest, context: Context
    ) -> identity_pb2.NodeCertificate:
        try:
            issued = await self._identities.enroll(
                token=request.token,
                csr_pem=request.csr_pem,
                node_id=request.node_id,
                peer=peer_of(context),
                software_version=request.software_version,
            )
        except Exception as exc:
            return await _abort(context, exc, "Enroll")  # type: ignore[no-any-return]
        return certificate_response(issued, self._identities.ca)


class NodeIdentityServicer(identity_pb2_grpc.NodeIdentityServiceServicer):
    def __init__(self, identities: IdentityService, auth: NodeAuthenticator) -> None:
        self._identities = identities
        self._auth = auth

    async def Renew(
        self, request: identity_pb2.RenewRequest, context: Context
    ) -> identity_pb2.NodeCertificate:
        try:
            identity = await self._auth.authenticate(context)
            if identity is None:
                raise Unauthenticated("renewal needs a node certificate (the node port is insecure)")
            issued = await self._identities.renew(identity, request.csr_pem)
        except Exception as exc:
            return await _abort(context, exc, "Renew")  # type: ignore[no-any-return]
        return certificate_response(issued, self._identities.ca)
