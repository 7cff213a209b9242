"""Evidence ingest whose budget spend is counted per evidence chain.

The quota ledger compares each node worker's leases with that worker's evidence
(``controlplane.evidence.spend``), so the spend a batch adds must name its chain. ``ingest``
hands ``add_spend`` no chain; this ingest names it around each batch (``spending_chain``, a
context variable of the batch's task). The control plane's ingest is this one.
"""

from __future__ import annotations

from controlplane.evidence.ingest import Ack, Batch, EvidenceIngest
from controlplane.evidence.spend import spending_chain


class AttributedIngest(EvidenceIngest):
    """``EvidenceIngest`` that counts each batch's spend as its chain's."""

    async def ingest(self, node_id: str, batch: Batch, public_key: bytes = b"", serial: str = "") -> Ack:
        with spending_chain(batch.chain_id):
            return await super().ingest(node_id, batch, public_key, serial)
