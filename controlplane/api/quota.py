"""QuotaService on the node port: a certified node leases quota (``controlplane.quota``).

The peer certificate is checked as for config sync (``controlplane.api.node_auth``): an
unknown or revoked certificate is refused before anything is read, and a node leases only
for tenants its node group sees (another tenant's ask is granted nothing, as one without
limits). Errors become statuses
in ``controlplane.api.status``.

The holder of a lease is one worker of the node (``LeaseRequest.holder``, its chain id
``<node id>/<i>``): the fair share counts each worker on its own. The node id in it must be
the certificate's: a node leases for its own workers only, at most ``MAX_WORKERS`` of them
(else PERMISSION_DENIED)."""

from __future__ import annotations

from controlplane.api.identity import _abort
from controlplane.api.node_auth import Context, NodeAuthenticator
from controlplane.errors import InvalidArgument, PermissionDenied
from controlplane.limits import DEFAULT_GROUP, NODE_ID_CHARS
from controlplane.quota import QuotaLedger
from dataplane.workers import MAX_WORKERS
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
                node = context.peer()[:NODE_ID_CHARS]
                grants = await self._ledger.lease(request.asks, _holder(request.holder, node))
            else:
                holder = _holder(request.holder, identity.node_id)
                if holder != identity.node_id:
                    _check_worker_of(holder, identity.node_id)
                grants = await self._ledger.lease(request.asks, holder, identity.group or DEFAULT_GROUP)
        except Exception as exc:
            return await _abort(context, exc, "Lease")  # type: ignore[no-any-return]
        return quota_pb2.LeaseResponse(grants=grants)


MAX_WORKER_CHARS = 16
"""Past the node id and its slash: a worker index is a few digits."""


def _check_worker_of(holder: str, node_id: str) -> None:
    """``PermissionDenied`` unless ``holder`` is ``<node_id>/<worker number>``, the number
    below ``MAX_WORKERS`` and written as the node writes it (no leading zeros). A prefix
    check took "a/x/0", the worker of node "a/x" (a node id may hold a slash), as a worker
    of node "a"; and each holder counts on its own in a tenant's fair share, so a node
    naming workers without bound ("7", "07", "007", ...) shrank every other node's share."""
    worker = holder.removeprefix(f"{node_id}/")
    if worker == holder or not (
        0 < len(worker) <= MAX_WORKER_CHARS and worker.isascii() and worker.isdigit()
    ):
        raise PermissionDenied(f"holder: a node leases for its own workers only ('{node_id}/<worker>')")
    if str(int(worker)) != worker or int(worker) >= MAX_WORKERS:
        raise PermissionDenied(
            f"holder: worker {worker!r} is not one of the {MAX_WORKERS} a node may run "
            f"('{node_id}/0' .. '{node_id}/{MAX_WORKERS - 1}', no leading zeros)"
        )


def _holder(claimed: str, node: str) -> str:
    """The lease holder: ``claimed`` (checked for size), or the node itself when empty."""
    if len(claimed) > NODE_ID_CHARS + 1 + MAX_WORKER_CHARS:
        raise InvalidArgument("holder", f"at most {NODE_ID_CHARS + 1 + MAX_WORKER_CHARS} characters")
    return claimed or node
