"""Budget spend as shipped evidence records it (``evidence_spend``, migrations 0020, 0029).

Ingest adds the cost (``cost.total_nanos``) of every record it stores, in the transaction
that stores it, to the tenant's and (for an API key's request) the key's budget scopes, per
UTC day and month of the record's time and per evidence chain (the node worker that wrote
it: the lease holder of the same name); a duplicate is never stored, so never counted
twice. Leases are the timely count (a request reserves before dispatch, settles after),
evidence the authoritative one, and it catches what settlements missed (a node killed
before it handed its leases back, a worker that spent past its holding).

The invariant (``budget_used``): each unit of spend counts once. A worker's spend past what
it held reaches the ledger twice, as ``overspent`` in its next lease and as its records'
cost, in either order; so the two are compared *per worker*, never added: a budget's window
counts, for every worker, the larger of what its leases say (granted less handed back, plus
overspent: what it spent and still holds) and what its evidence says it spent, summed over
the workers, and never less than all the evidence of the window (spend of no known worker:
rows from before migration 0029). A count that compared the totals, and kept the evidence's
when it was ahead, counted an overspend shipped before the lease that reported it twice.

Rows are upserted in (scope, window, chain) order, so ingest of several replicas never
deadlocks on one another.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.limits import INT64_MAX


@dataclass(slots=True)
class Spent:
    """What evidence says was spent in one budget scope and window."""

    total: int = 0
    """All of it, whoever spent it."""
    chains: dict[str, int] = field(default_factory=dict)
    """By evidence chain (node worker); spend of no known worker is in ``total`` only."""


def lease_counts(holders: Mapping[str, Any]) -> dict[str, int]:
    """Holder -> its count, of a budget row's ``holders`` (holder -> [count, when it last
    leased, epoch seconds]: ``controlplane.quota``)."""
    return {str(h): int(v[0] if isinstance(v, list) else v) for h, v in holders.items()}


def budget_used(used: int, holders: Mapping[str, Any], spent: Spent | None) -> int:
    """What a budget's window counts as used (module docstring): per lease holder the larger
    of its leases' count (``holders``, the ledger's per holder, summing to at most ``used``;
    the rest is a count of no known holder, from before migration 0029) and its evidence,
    summed, and never less than all the evidence."""
    spent = spent or Spent()
    leased = lease_counts(holders)
    unattributed = max(0, used - sum(leased.values()))
    per_holder = sum(
        max(leased.get(h, 0), spent.chains.get(h, 0)) for h in leased.keys() | spent.chains.keys()
    )
    return min(max(unattributed + per_holder, spent.total), INT64_MAX)


def scope_of(tenant_id: str, api_key_id: str, period: str) -> str:
    """A budget's scope as ``controlplane.quota`` names it: ``<tenant>/<key or "">/<day|month>``."""
    return f"{tenant_id}/{api_key_id}/{period}"


def windows_of(us: int) -> tuple[str, str]:
    """The UTC day and month windows ("2026-11-30", "2026-11") of a time in us since 1970."""
    when = datetime.fromtimestamp(us / 1e6, UTC)
    return when.strftime("%Y-%m-%d"), when.strftime("%Y-%m")


async def tenants_seen(session: AsyncSession, serial: str) -> frozenset[str] | None:
    """The ids of the tenants the node group of certificate ``serial`` serves (None: every
    tenant; no certificate, as on an insecure node port, or a group that sees all)."""
    if not serial:
        return None
    row = (
        await session.execute(
            text(
                "SELECT g.tenants FROM node_certificates c JOIN node_groups g ON g.name = c.node_group"
                " WHERE c.serial = :serial"
            ),
            {"serial": serial},
        )
    ).first()
    if row is None:
        return frozenset()  # the group is gone: it serves nobody
    if row[0] is None:
        return None
    named = [str(t) for t in row[0]]
    ids = await session.execute(
        text("SELECT CAST(id AS text) FROM tenants WHERE CAST(id AS text) = ANY(:v) OR name = ANY(:v)"),
        {"v": named},
    )
    return frozenset(ids.scalars())


async def add_spend(
    session: AsyncSession,
    spends: Mapping[int, tuple[str, str, int, int]],
    stored: Sequence[int],
    tenants: frozenset[str] | None = None,
    *,
    chain_id: str,
) -> None:
    """Add the costs of the stored records ``stored`` (indexes into ``spends``) of evidence
    chain ``chain_id`` (the node worker that spent them), counting only those of
    ``tenants`` (None: every tenant).

    What is counted here is a floor under every node's budget lease for that tenant, so a
    node's records may only raise it for tenants its group serves: otherwise a node of any
    group could ship records naming another group's tenant and exhaust its budget. Such
    records are still stored (the chain is the node's own), they just spend nothing."""
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for i in stored:
        found = spends.get(i)
        if found is None:
            continue
        tenant_id, api_key_id, nanos, us = found
        if tenants is not None and tenant_id not in tenants:
            continue
        day, month = windows_of(us)
        for key in ("", api_key_id) if api_key_id else ("",):
            totals[(scope_of(tenant_id, key, "day"), day)] += nanos
            totals[(scope_of(tenant_id, key, "month"), month)] += nanos
    if not totals:
        return
    chain = chain_id
    await session.execute(
        text(
            'INSERT INTO evidence_spend (scope, "window", chain_id, nanos) VALUES (:scope, :window, :chain, :nanos)'
            ' ON CONFLICT (scope, "window", chain_id) DO UPDATE SET'
            " nanos = LEAST(CAST(evidence_spend.nanos AS numeric) + EXCLUDED.nanos, :cap), updated_at = now()"
        ),
        [
            {
                "scope": scope,
                "window": window,
                "chain": chain,
                "nanos": min(nanos, INT64_MAX),
                "cap": INT64_MAX,
            }
            for (scope, window), nanos in sorted(totals.items())
        ],
    )


async def spent(session: AsyncSession, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Spent]:
    """What evidence says was spent in each (scope, window) of ``keys`` (absent: nothing)."""
    if not keys:
        return {}
    rows = await session.execute(
        text(
            'SELECT scope, "window", chain_id, nanos FROM evidence_spend WHERE (scope, "window") IN'
            " (SELECT * FROM unnest(CAST(:scopes AS text[]), CAST(:windows AS text[])))"
        ),
        {"scopes": [k[0] for k in keys], "windows": [k[1] for k in keys]},
    )
    found: dict[tuple[str, str], Spent] = {}
    for scope, window, chain, nanos in rows:
        entry = found.setdefault((scope, window), Spent())
        entry.total = min(entry.total + int(nanos), INT64_MAX)
        if chain:
            entry.chains[chain] = int(nanos)
    return found
