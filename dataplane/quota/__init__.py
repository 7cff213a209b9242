"""Rate limits and budgets on the node, with quota leased from the control plane.

``buckets`` is the request path (no I/O: the pipeline's limit step calls ``Quotas.admit``
before dispatch and ``Quotas.settle`` when the request ends); ``leaser`` is the background
loop that fills the buckets over the node port (``QuotaService.Lease``), or on an air-gapped
node from the node's own ledger (``local``, served by worker 0 on a unix socket). Why leases
and not a per-node split: see ``controlplane/quota.py``.
"""

from dataplane.quota.buckets import Kind, Quotas, Reservation
from dataplane.quota.leaser import DEFAULT_LEASE_INTERVAL, QuotaLeaser

__all__ = ["DEFAULT_LEASE_INTERVAL", "Kind", "QuotaLeaser", "Quotas", "Reservation"]
