"""Rate limits and budgets of tenants and API keys: set, read and cleared by admins.

Stored as the ``limits`` JSON column of ``tenants`` and ``api_keys`` (the names of the
snapshot's ``Limits`` fields, only those set; ``None`` when none is), carried to nodes in
the snapshot (``snapshots.build.limits_pb``) and enforced there with quota leased from
``controlplane.quota``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text

from controlplane.db.models import ApiKey, Tenant
from controlplane.db.session import database_now
from controlplane.errors import InvalidArgument, NotFound
from controlplane.evidence.spend import budget_used
from controlplane.evidence.spend import spent as evidence_spent
from controlplane.limits import INT64_MAX
from controlplane.quota import budget_windows, scope_key
from controlplane.repositories import config as repo
from controlplane.services.base import Caller, UnitOfWork
from controlplane.snapshots.build import LIMIT_FIELDS, ON_UNREACHABLE, limits_pb
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.wallclock import utc_now

ON_UNREACHABLE_NAME = {value: name for name, value in ON_UNREACHABLE.items()}


def limits_json(limits: snapshot_pb2.Limits) -> dict[str, Any] | None:
    """A snapshot ``Limits`` as the column stores it (None when it sets nothing)."""
    stored: dict[str, Any] = {name: getattr(limits, name) for name in LIMIT_FIELDS if getattr(limits, name)}
    if limits.on_unreachable != snapshot_pb2.ON_UNREACHABLE_FAIL_OPEN:
        stored["on_unreachable"] = ON_UNREACHABLE_NAME[limits.on_unreachable]
    return stored or None


@dataclass(frozen=True, slots=True)
class LimitsChange:
    """What ``set`` changes: a field left None keeps its value; 0 removes that limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget_day_nanos: int | None = None
    budget_month_nanos: int | None = None
    on_unreachable: int | None = None


@dataclass(frozen=True, slots=True)
class LimitsView:
    tenant: Tenant
    key: ApiKey | None
    limits: snapshot_pb2.Limits
    spent_day_nanos: int = 0
    spent_month_nanos: int = 0
    snapshot_version: int = 0


@dataclass(slots=True)
class LimitsService:
    uow: UnitOfWork
    host_clock: Callable[[], datetime] = utc_now
    """This host's clock: only compared with the database's, which dates the budget windows."""

    async def set(self, caller: Caller, tenant: str, key_id: str, change: LimitsChange) -> LimitsView:
        for name in LIMIT_FIELDS:
            value = getattr(change, name)
            if value is not None and not 0 <= value <= INT64_MAX:
                raise InvalidArgument(name, f"must be between 0 and {INT64_MAX}")
        if change.on_unreachable is not None:
            if key_id:
                raise InvalidArgument("on_unreachable", "is a tenant's setting; an API key has none")
            if change.on_unreachable not in ON_UNREACHABLE_NAME:
                raise InvalidArgument(
                    "on_unreachable", f"{change.on_unreachable} is not 0 (fail_open) or 1 (fail_closed)"
                )
        async with self.uow.change(caller, f"set limits of {_target(tenant, key_id)}") as ch:
            trow, krow = await _target_rows(ch.session, tenant, key_id)
            row: Tenant | ApiKey = krow if krow is not None else trow
            limits = build_limits(row.limits)
            for name in LIMIT_FIELDS:
                value = getattr(change, name)
                if value is not None:
                    setattr(limits, name, value)
            if change.on_unreachable is not None:
                limits.on_unreachable = change.on_unreachable  # type: ignore[assignment]
            row.limits = limits_json(limits)
        return LimitsView(trow, krow, limits, snapshot_version=ch.version)

    async def clear(self, caller: Caller, tenant: str, key_id: str) -> LimitsView:
        async with self.uow.change(caller, f"clear limits of {_target(tenant, key_id)}") as ch:
            trow, krow = await _target_rows(ch.session, tenant, key_id)
            (krow if krow is not None else trow).limits = None
        return LimitsView(trow, krow, snapshot_pb2.Limits(), snapshot_version=ch.version)

    async def get(self, tenant: str, key_id: str) -> LimitsView:
        async with self.uow.read() as session:
            trow, krow = await _target_rows(session, tenant, key_id)
            row: Tenant | ApiKey = krow if krow is not None else trow
            # The ledger's windows (``QuotaLedger.lease``): by the database's clock. By this
            # host's, a replica whose clock was a day off showed another day's spend (0 after
            # its midnight) while the nodes were refused on the ledger's.
            day, month = budget_windows(await database_now(session, self.host_clock, "budget windows"))
            base = scope_key(str(trow.id), str(krow.id) if krow is not None else "")
            leased: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {
                (scope, window): (used, holders or {})
                for scope, window, used, holders in await session.execute(
                    text(
                        'SELECT scope, "window", used, holders FROM quota_state'
                        ' WHERE (scope, "window") IN ((:day_scope, :day), (:month_scope, :month))'
                    ),
                    {"day_scope": f"{base}/day", "day": day, "month_scope": f"{base}/month", "month": month},
                )
            }
            # Counted as the ledger counts it: per holder, its leases or its evidence.
            keys = [(f"{base}/day", day), (f"{base}/month", month)]
            recorded = await evidence_spent(session, keys)
        day_nanos, month_nanos = (budget_used(*leased.get(k, (0, {})), recorded.get(k)) for k in keys)
        return LimitsView(trow, krow, build_limits(row.limits), day_nanos, month_nanos)


def build_limits(stored: dict[str, Any] | None) -> snapshot_pb2.Limits:
    return limits_pb(stored) if stored else snapshot_pb2.Limits()


def _target(tenant: str, key_id: str) -> str:
    return f"api key {key_id} of tenant {tenant}" if key_id else f"tenant {tenant}"


async def _target_rows(session: Any, tenant: str, key_id: str) -> tuple[Tenant, ApiKey | None]:
    if not tenant:
        raise InvalidArgument("tenant", "must not be empty")
    trow = await repo.get_tenant(session, tenant)
    if trow is None:
        raise NotFound("tenant", tenant, field="tenant")
    if not key_id:
        return trow, None
    krow = await repo.get_api_key(session, key_id)
    # Another tenant's key is as unknown as a missing one: nothing to learn about it.
    if krow is None or krow.tenant_id != trow.id:
        raise NotFound("api key", key_id, field="key_id")
    return trow, krow
