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

import asyncio
from dataclasses import dataclass, field
from urllib.parse import unquote

from cryptography import x509

from controlplane.api.identity import _abort
from controlplane.api.node_auth import Context, NodeAuthenticator
from controlplane.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from controlplane.limits import DEFAULT_GROUP, NODE_ID_CHARS
from controlplane.quota import QuotaLedger
from dataplane.connection_front import peer_of
from dataplane.identity import urn
from dataplane.workers import MAX_WORKERS
from signalbox.api.config.v1 import quota_pb2, quota_pb2_grpc
from signalbox.text import printable

MAX_LEASES_PER_NODE = 2 * MAX_WORKERS
"""Lease calls one node may have on a replica at once, running or waiting their turn (each
worker leases one call at a time; twice that: one its client gave up on may still run);
past it RESOURCE_EXHAUSTED."""
LEASE_SLOTS_PER_NODE = 4
"""Of those, how many run at once; the rest wait without touching the database. Each call
is a transaction (its certificate looked up, the quota rows locked): one node opening
connections of 100 calls each held the replica's whole database pool, and every other
node's calls waited behind it."""


@dataclass(slots=True)
class _Calls:
    """A node's Lease calls on this replica."""

    count: int = 0
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(LEASE_SLOTS_PER_NODE))


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    def __init__(self, ledger: QuotaLedger, auth: NodeAuthenticator) -> None:
        self._ledger = ledger
        self._auth = auth
        self._calls: dict[str, _Calls] = {}
        """Per node id (per peer address on an insecure port), while it has calls here."""

    async def Lease(self, request: quota_pb2.LeaseRequest, context: Context) -> quota_pb2.LeaseResponse:
        try:
            # Counted before anything reads the database (the certificate's lookup does): the
            # node the presented certificate names (TLS checked it is the node CA's), or on an
            # insecure port the peer address.
            caller = _presented_node(context) or peer_of(context)[:NODE_ID_CHARS]
            calls = self._calls.setdefault(caller, _Calls())
            if calls.count >= MAX_LEASES_PER_NODE:
                raise ResourceExhausted(
                    f"node {printable(caller, 150)}: at most {MAX_LEASES_PER_NODE} quota leases at once"
                )
            calls.count += 1
            try:
                async with calls.slots:
                    grants = await self._lease(request, context)
            finally:
                calls.count -= 1
                if not calls.count:
                    del self._calls[caller]
        except Exception as exc:
            return await _abort(context, exc, "Lease")  # type: ignore[no-any-return]
        return quota_pb2.LeaseResponse(grants=grants)

    async def _lease(self, request: quota_pb2.LeaseRequest, context: Context) -> list[quota_pb2.QuotaGrant]:
        identity = await self._auth.authenticate(context)
        if identity is None:
            # An insecure node port (development): no certificate, no group to hold to;
            # the peer address stands in for the node.
            node = peer_of(context)[:NODE_ID_CHARS]
            return await self._ledger.lease(request.asks, _holder(request.holder, node))
        holder = _holder(request.holder, identity.node_id)
        if holder != identity.node_id:
            _check_worker_of(holder, identity.node_id)
        return await self._ledger.lease(request.asks, holder, identity.group or DEFAULT_GROUP)


def _presented_node(context: Context) -> str | None:
    """The node id the call's certificate names (its SAN URN), None without one."""
    pem = list((context.auth_context() or {}).get("x509_pem_cert", ()))
    if not pem:
        return None
    try:
        names = (
            x509.load_pem_x509_certificate(pem[0])
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value.get_values_for_type(x509.UniformResourceIdentifier)
        )
    except (ValueError, x509.ExtensionNotFound):
        return None
    prefix = urn("node", "")
    return next((unquote(n.removeprefix(prefix)) for n in names if n.startswith(prefix)), None)


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
