"""QuotaService on the node port: a certified node leases quota (``controlplane.quota``).

The peer certificate is checked as for config sync (``controlplane.api.node_auth``): an
unknown or revoked certificate is refused before anything is read, and a node leases only
for tenants its node group sees (another tenant's ask is granted nothing, as one without
limits). Errors become statuses
in ``controlplane.api.status``."""

from __future__ import annotations

from controlplane.api.identity import _abort
from controlplane.api.node_auth import Context, NodeAuthenticator
from controlplane.limits import DEFAULT_GROUP, NODE_ID_CHARS
from controlplane.quota import QuotaLedger
from signalbox.api.config.v1 import quota_pb2, quota_pb2_grpc


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    def __init__(self, ledger: QuotaLedger, auth: NodeAuthenticator) -> None:
        self._ledger = ledger
        self._auth = auth

    async def Lease(self, request: quota_pb2.LeaseRequest, context: Context) -> quota_pb2.LeaseResponse:
        try:
            identity = await self._auth.authenticate(context)
            if identity is None:
                # An insecure node port (development): no certificate, no group to hold to;
                # the peer address stands in for the node.
                grants = await self._ledger.lease(request.asks, context.peer()[:NODE_ID_CHARS])
            else:
                grants = await self._ledger.lease(
                    request.asks, identity.node_id, identity.group or DEFAULT_GROUP
                )
        except Exception as exc:
            return await _abort(context, exc, "Lease")  # type: ignore[no-any-return]
        return quota_pb2.LeaseResponse(grants=grants)
