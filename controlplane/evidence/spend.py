"""Budget spend as shipped evidence records it (``evidence_spend``, migration 0020).

Ingest adds the cost (``cost.total_nanos``) of every record it stores, in the transaction
that stores it, to the tenant's and (for an API key's request) the key's budget scopes, per
UTC day and month of the record's time; a duplicate is never stored, so never counted
twice. The quota ledger (``controlplane.quota``) never counts a budget as less used than
this: leases are the timely count (a request reserves before dispatch, settles after),
evidence the authoritative one, and it catches what settlements missed (a node killed
before it handed its leases back, a worker that overspent its holding).

Rows are upserted in (scope, window) order, the order the ledger locks ``quota_state`` in,
so ingest and leases of several replicas never deadlock on one another.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.limits import INT64_MAX


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
) -> None:
    """Add the costs of the stored records ``stored`` (indexes into ``spends``), counting only
    those of ``tenants`` (None: every tenant).

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
    await session.execute(
        text(
            'INSERT INTO evidence_spend (scope, "window", nanos) VALUES (:scope, :window, :nanos)'
            ' ON CONFLICT (scope, "window") DO UPDATE SET'
            " nanos = LEAST(CAST(evidence_spend.nanos AS numeric) + EXCLUDED.nanos, :cap), updated_at = now()"
        ),
        [
            {"scope": scope, "window": window, "nanos": min(nanos, INT64_MAX), "cap": INT64_MAX}
            for (scope, window), nanos in sorted(totals.items())
        ],
    )


async def spent(session: AsyncSession, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """What evidence says was spent in each (scope, window) of ``keys`` (absent: nothing)."""
    if not keys:
        return {}
    rows = await session.execute(
        text(
            'SELECT scope, "window", nanos FROM evidence_spend WHERE (scope, "window") IN'
            " (SELECT * FROM unnest(CAST(:scopes AS text[]), CAST(:windows AS text[])))"
        ),
        {"scopes": [k[0] for k in keys], "windows": [k[1] for k in keys]},
    )
    return {(scope, window): int(nanos) for scope, window, nanos in rows}
