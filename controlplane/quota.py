"""Quota leases: how a rate limit or a budget holds across every node of a group.

Why leases. A node must never call the database (or the control plane) per request, so
each node enforces limits from quota it holds locally. The obvious split, each of N nodes
allowed limit/N, fails as soon as traffic is uneven: with 80/10/10 traffic the busy node
refuses at a third of the limit while the quiet ones leave their share unused, and the
tenant gets ~45% of what it pays for. Here nodes instead *lease* quota: about once per
lease period a node tells the control plane how much it used and wants (sized by its own
observed demand) and hands back what it holds but does not need; the control plane hands
out at most the limit across all of them. A busy node gets what quiet nodes return, so the
fleet's rate follows the limit whatever the split (Doorman, Google's global rate limiter,
works the same way).

The ledger. One row of ``quota_state`` per (scope, window), locked (``FOR UPDATE``, in
scope order, so two replicas never deadlock) while a lease is computed, so control-plane
replicas sharing the database agree and never hand out the same quota twice:

- A rate (requests or tokens per minute) is a token bucket: it refills at limit/60 per
  second up to ``burst_seconds`` worth (a minute by default), and a lease takes what it
  holds. Returned units go back in (never above the cap). Over any interval T the fleet
  admits at most the cap + limit*T/60, plus what nodes held at its start (a lease period
  of their demand).
- A budget (nano-USD per UTC day or month) is counted per holder (``holders``: holder ->
  what it was leased in that window, less what it handed back, plus what it overspent, and
  when it last leased; ``used`` their sum): each holder's count is the larger of that and what its shipped
  evidence says it spent (``controlplane.evidence.spend.budget_used``: catches what
  settlements missed, e.g. a node killed while it held quota, and counts a holder's
  overspend once whether its record or its lease report arrives first). A node reserves a
  request's worst case from its holding before dispatch and settles to the real cost after,
  so the count is what was spent plus what nodes hold; nothing is granted past the budget,
  and a grant says ``exhausted`` once the window is used up, so every node stops within one
  lease period. A used-up window stays so until it ends or its limit is raised: what nodes
  hand back after that counts as spent, and nodes keep refusing until the window ends.

A lease call is one transaction for all of a node's scopes; its cost is per node per lease
period, never per request.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.errors import InvalidArgument
from controlplane.evidence.spend import Spent, budget_used, lease_counts, spent
from controlplane.limits import INT64_MAX
from signalbox import quota_grants as grants
from signalbox.api.config.v1 import quota_pb2

MAX_ASKS = 4096
"""Asks in one lease call: a node with more scopes sends several calls."""

IDLE_HOLDER_S = 3600.0
"""A budget's holder that has not leased it for this long, and whose evidence covers its
count, is dropped from the row (its evidence counts it the same): a window's row holds the
holders that count, not every worker that ever leased in the month."""

DEFAULT_BURST_SECONDS = 60.0
"""A rate's bucket holds this many seconds of its limit: a full minute by default."""

KIND_SUFFIX: dict[int, str] = {
    quota_pb2.QUOTA_KIND_REQUESTS_PER_MINUTE: "rpm",
    quota_pb2.QUOTA_KIND_TOKENS_PER_MINUTE: "tpm",
    quota_pb2.QUOTA_KIND_BUDGET_DAY: "day",
    quota_pb2.QUOTA_KIND_BUDGET_MONTH: "month",
}
LIMIT_FIELD: dict[int, str] = {
    quota_pb2.QUOTA_KIND_REQUESTS_PER_MINUTE: "requests_per_minute",
    quota_pb2.QUOTA_KIND_TOKENS_PER_MINUTE: "tokens_per_minute",
    quota_pb2.QUOTA_KIND_BUDGET_DAY: "budget_day_nanos",
    quota_pb2.QUOTA_KIND_BUDGET_MONTH: "budget_month_nanos",
}
BUDGETS: tuple[int, ...] = (quota_pb2.QUOTA_KIND_BUDGET_DAY, quota_pb2.QUOTA_KIND_BUDGET_MONTH)


def scope_key(tenant_id: str, api_key_id: str) -> str:
    """The start of a ``quota_state.scope``: ``<tenant id>/<key id or empty>``."""
    return f"{tenant_id}/{api_key_id}"


def budget_windows(now: datetime) -> tuple[str, str]:
    """The UTC day and month windows of ``now`` ("2026-11-30", "2026-11"): the database's
    clock, which every replica and the ledger share, never a host's."""
    now = now.astimezone(UTC)
    return now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(field, "must be an id (a UUID)") from None


@dataclass(slots=True)
class _Ask:
    index: int
    tenant_id: uuid.UUID
    api_key_id: uuid.UUID | None
    kind: int
    want: int
    returned: int
    returned_window: str
    overspent: int = 0
    scope: str = ""
    window: str = ""
    limit: int = 0


def _checked(asks: Sequence[quota_pb2.QuotaAsk]) -> list[_Ask]:
    if len(asks) > MAX_ASKS:
        raise InvalidArgument("asks", f"at most {MAX_ASKS} per call (got {len(asks)})")
    checked = []
    for i, ask in enumerate(asks):
        field = f"asks[{i}]"
        if ask.scope.kind not in KIND_SUFFIX:
            raise InvalidArgument(f"{field}.scope.kind", f"unknown kind {int(ask.scope.kind)}")
        for name in ("want", "returned", "overspent"):
            if getattr(ask, name) > INT64_MAX:
                raise InvalidArgument(f"{field}.{name}", f"at most {INT64_MAX}")
        if not math.isfinite(ask.demand_per_second) or ask.demand_per_second < 0:
            raise InvalidArgument(f"{field}.demand_per_second", "must be a finite number >= 0")
        if len(ask.returned_window) > 16:
            raise InvalidArgument(f"{field}.returned_window", "at most 16 characters")
        key = _uuid(ask.scope.api_key_id, f"{field}.scope.api_key_id") if ask.scope.api_key_id else None
        checked.append(
            _Ask(
                i,
                _uuid(ask.scope.tenant_id, f"{field}.scope.tenant_id"),
                key,
                ask.scope.kind,
                ask.want,
                ask.returned,
                ask.returned_window,
                ask.overspent,
            )
        )
    return checked


class QuotaLedger:
    """Computes leases against ``quota_state``; one transaction per call."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, burst_seconds: float = DEFAULT_BURST_SECONDS
    ) -> None:
        self._sessions = sessions
        self.burst_seconds = burst_seconds

    async def lease(
        self, asks: Sequence[quota_pb2.QuotaAsk], holder: str = "", group: str | None = None
    ) -> list[quota_pb2.QuotaGrant]:
        """Grants to ``holder`` (a node worker, ``<node id>/<worker>``: each counts on its own
        in the fair share) of node group ``group`` in the order of ``asks`` (a tenant the group
        does not see gets nothing, as one without limits; ``group`` None: no check, an insecure
        node port); ``InvalidArgument`` names the first bad ask."""
        checked = _checked(asks)
        if not checked:
            return []
        async with self._sessions() as session, session.begin():
            now: datetime = (await session.execute(text("SELECT now()"))).scalar_one()
            day, month = budget_windows(now)
            await self._resolve(session, checked, day, month, group)
            limited = [a for a in checked if a.limit]
            rows = await self._lock(session, limited, now)
            recorded = await spent(session, [(a.scope, a.window) for a in limited if a.kind in BUDGETS])
            grants: dict[int, quota_pb2.QuotaGrant] = {}
            updates: list[dict[str, Any]] = []
            for ask in limited:
                state = rows[(ask.scope, ask.window)]
                # Budgets: each holder's spend counted once, by its leases or its evidence.
                grant = self._grant(ask, state, now, holder, recorded.get((ask.scope, ask.window)))
                grants[ask.index] = grant
                updates.append({"scope": ask.scope, "window": ask.window, **state})
            if updates:
                await session.execute(
                    text(
                        "UPDATE quota_state SET level = :level, used = :used, updated_at = :now,"
                        " holders = CAST(:holders AS jsonb)"
                        ' WHERE scope = :scope AND "window" = :window'
                    ),
                    [{**u, "now": now, "holders": json.dumps(u["holders"])} for u in updates],
                )
        return [
            grants.get(a.index)
            or quota_pb2.QuotaGrant(scope=asks[a.index].scope, granted=0, limit=0, window=a.window)
            for a in checked
        ]

    async def _resolve(
        self, session: AsyncSession, asks: list[_Ask], day: str, month: str, group: str | None
    ) -> None:
        """Each ask's limit as the database has it now (0: none: the tenant or key is gone, the
        key is another tenant's, the node's group does not see the tenant, or that limit is not
        set), its scope and window."""
        tenants = {a.tenant_id for a in asks}
        keys = {a.api_key_id for a in asks if a.api_key_id is not None}
        visible: frozenset[str] | None = None  # None: every tenant
        if group is not None:
            row = (
                await session.execute(
                    text("SELECT tenants FROM node_groups WHERE name = :name"), {"name": group}
                )
            ).first()
            visible = frozenset() if row is None else None if row[0] is None else frozenset(map(str, row[0]))
        tenant_limits: dict[uuid.UUID, Any] = {}
        for tenant_id, name, limits in await session.execute(
            text("SELECT id, name, limits FROM tenants WHERE id = ANY(:ids)"), {"ids": list(tenants)}
        ):
            if visible is None or str(tenant_id) in visible or name in visible:
                tenant_limits[tenant_id] = limits
        key_limits: dict[uuid.UUID, tuple[uuid.UUID, Any]] = {}
        if keys:
            for key_id, tenant_id, limits in await session.execute(
                text("SELECT id, tenant_id, limits FROM api_keys WHERE id = ANY(:ids)"),
                {"ids": list(keys)},
            ):
                key_limits[key_id] = (tenant_id, limits)
        for a in asks:
            if a.api_key_id is None:
                stored = tenant_limits.get(a.tenant_id)
            else:
                owner, stored = key_limits.get(a.api_key_id, (None, None))
                # A key's limits are its tenant's to lease: only for a tenant the node's group
                # sees (``tenant_limits`` holds just those). Without this, a node of another
                # group could name the key and drain the bucket the key's own nodes lease from.
                if owner != a.tenant_id or a.tenant_id not in tenant_limits:
                    stored = None
            a.limit = int((stored or {}).get(LIMIT_FIELD[a.kind], 0))
            a.scope = f"{scope_key(str(a.tenant_id), str(a.api_key_id or ''))}/{KIND_SUFFIX[a.kind]}"
            a.window = (
                day if a.kind == quota_pb2.QUOTA_KIND_BUDGET_DAY else month if a.kind in BUDGETS else ""
            )

    async def _lock(
        self, session: AsyncSession, asks: list[_Ask], now: datetime
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """The rows of ``asks``, created when missing (a rate's bucket starts full), locked."""
        if not asks:
            return {}
        wanted = sorted({(a.scope, a.window, a.tenant_id, self._capacity(a)) for a in asks})
        await session.execute(
            text(
                'INSERT INTO quota_state (scope, "window", tenant_id, level, used, updated_at)'
                " VALUES (:scope, :window, :tenant_id, :level, 0, :now) ON CONFLICT DO NOTHING"
            ),
            [{"scope": s, "window": w, "tenant_id": t, "level": c, "now": now} for s, w, t, c in wanted],
        )
        rows = await session.execute(
            text(
                'SELECT scope, "window", level, used, updated_at, holders FROM quota_state'
                ' WHERE (scope, "window") IN (SELECT * FROM unnest(CAST(:scopes AS text[]), CAST(:windows AS text[])))'
                ' ORDER BY scope, "window" FOR UPDATE'
            ),
            {"scopes": [w[0] for w in wanted], "windows": [w[1] for w in wanted]},
        )
        return {
            (scope, window): {"level": level, "used": used, "updated_at": updated, "holders": holders or {}}
            for scope, window, level, used, updated, holders in rows
        }

    def _capacity(self, ask: _Ask) -> float:
        return grants.capacity(ask.limit, self.burst_seconds) if ask.kind not in BUDGETS else 0.0

    def _grant(
        self, ask: _Ask, state: dict[str, Any], now: datetime, holder: str, spent: Spent | None
    ) -> quota_pb2.QuotaGrant:
        scope = quota_pb2.QuotaScope(
            tenant_id=str(ask.tenant_id),
            api_key_id=str(ask.api_key_id or ""),
            kind=ask.kind,  # type: ignore[arg-type]
        )
        if ask.kind in BUDGETS:
            same = ask.returned_window == ask.window
            grant = _grant_budget(
                state,
                holder,
                now.timestamp(),
                limit=ask.limit,
                want=ask.want,
                returned=ask.returned if same else 0,
                overspent=ask.overspent if same else 0,
                spent=spent,
            )
            state["updated_at"] = now
            return quota_pb2.QuotaGrant(
                scope=scope,
                granted=grant.granted,
                window=ask.window,
                limit=ask.limit,
                exhausted=grant.exhausted,
                window_seconds_left=grants.window_seconds_left(ask.window, now.timestamp()),
            )
        row = grants.Row(
            level=float(state["level"]),
            updated_at=state["updated_at"].timestamp(),
            holders=state["holders"],
        )
        grant = grants.grant_rate(
            row,
            limit=ask.limit,
            burst_seconds=self.burst_seconds,
            want=ask.want,
            returned=ask.returned,
            overspent=ask.overspent,
            now=now.timestamp(),
            holder=holder,
        )
        state.update(level=row.level, updated_at=now, holders=row.holders)
        return quota_pb2.QuotaGrant(
            scope=scope,
            granted=grant.granted,
            limit=ask.limit,
            exhausted=grant.exhausted,
            refill_seconds=grant.refill_seconds,
        )


def _grant_budget(
    state: dict[str, Any],
    holder: str,
    now: float,
    *,
    limit: int,
    want: int,
    returned: int,
    overspent: int,
    spent: Spent | None,
) -> grants.Grant:
    """Take back ``returned`` (not once the window is used up), count ``overspent``, then grant
    up to ``want`` within ``limit``, all in ``holder``'s own count (``state``: the locked row,
    updated). ``spent``: the window's evidence.

    ``overspent`` is spend the holder's evidence may count already: it goes into the holder's
    count, which is compared with its evidence (``budget_used``), never added to it. Then the
    count is raised to the evidence, so what is granted now comes on top of what the holder
    spent, also what it spent without leases (failing open through an outage) and a hand-back
    never takes it below that: every overspend of the holder's up to this lease is in this
    lease (the node reports its whole debt), so the evidence ahead of its count is spend no
    lease will report. A holder idle for ``IDLE_HOLDER_S`` whose evidence covers its count is
    dropped (``now``: epoch seconds, the ledger's clock): it counts the same by its evidence,
    and comes back as a holder never leased (its first request on credit, asked for)."""
    spent = spent or Spent()
    used = int(state["used"])
    leased = lease_counts(state["holders"])
    seen = {str(h): float(v[1]) if isinstance(v, list) else now for h, v in state["holders"].items()}
    unattributed = max(0, used - sum(leased.values()))
    own = leased.get(holder, 0)
    if budget_used(used, leased, spent) < limit:
        # Once a window is used up it stays so until it ends (or the limit is raised): what a
        # holder hands back after that is counted as spent, never granted again. Otherwise
        # the leftover of each exhausted holder reopened the window for a moment, and every
        # holder read "not exhausted" and started over (the budget leaked a request a cycle).
        own -= min(returned, own)
    own = max(min(own + overspent, INT64_MAX), spent.chains.get(holder, 0))
    leased[holder] = own
    counted = budget_used(min(unattributed + sum(leased.values()), INT64_MAX), leased, spent)
    granted = max(0, min(want, limit - counted))
    leased[holder] = min(own + granted, INT64_MAX)
    seen[holder] = now
    kept = {
        h: n
        for h, n in leased.items()
        if h == holder or n > spent.chains.get(h, 0) or now - seen[h] < IDLE_HOLDER_S
    }
    state["used"] = min(unattributed + sum(kept.values()), INT64_MAX)
    state["holders"] = {h: [n, seen[h]] for h, n in kept.items()}
    return grants.Grant(granted, budget_used(state["used"], kept, spent) >= limit)
