"""QuotaService on the node port: a certified node leases quota (``controlplane.quota``).

The peer certificate is checked as for config sync (``controlplane.api.node_auth``): an
unknown or revoked certificate is refused before anything is read. Errors become statuses
in ``controlplane.api.status``."""

from __future__ import annotations

from controlplane.api.identity import _abort
from controlplane.api.node_auth import Context, NodeAuthenticator
from controlplane.limits import NODE_ID_CHARS
from controlplane.quota import QuotaLedger
from signalbox.api.config.v1 import quota_pb2, quota_pb2_grpc


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    def __init__(self, ledger: QuotaLedger, auth: NodeAuthenticator) -> None:
        self._ledger = ledger
        self._auth = auth

    async def Lease(self, request: quota_pb2.LeaseRequest, context: Context) -> quota_pb2.LeaseResponse:
        try:
            identity = await self._auth.authenticate(context)
            # With an insecure node port there is no certificate: the peer address stands in.
            node = identity.node_id if identity is not None else context.peer()
            grants = await self._ledger.lease(request.asks, node[:NODE_ID_CHARS])
        except Exception as exc:
            return await _abort(context, exc, "Lease")  # type: ignore[no-any-return]
        return quota_pb2.LeaseResponse(grants=grants)
