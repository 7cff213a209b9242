"""``signalbox admin limits set|get|clear``: rate limits and budgets of a tenant or an API key.

Budgets are given in US dollars (``--budget-day 12.50``) and sent as nano-USD, the unit of
the cost fields of evidence records."""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation

from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.shell.admin_cli.commands.base import Stub, bounded_int
from signalbox.shell.admin_cli.output import Output

NANOS_PER_USD = 1_000_000_000
MAX_NANOS = 2**63 - 1
ON_UNREACHABLE_FLAG = {
    snapshot_pb2.ON_UNREACHABLE_FAIL_OPEN: "fail_open",
    snapshot_pb2.ON_UNREACHABLE_FAIL_CLOSED: "fail_closed",
}
LIMITS_COLUMNS = (
    "tenant",
    "key",
    "requests/min",
    "tokens/min",
    "budget/day",
    "budget/month",
    "on_unreachable",
    "spent today",
    "spent this month",
)


def usd_nanos(text: str) -> int:
    """``"12.50"`` US dollars as nano-USD; argparse's error for anything else."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount of US dollars") from None
    nanos = value * NANOS_PER_USD
    if not value.is_finite() or value < 0 or nanos != nanos.to_integral_value() or nanos > MAX_NANOS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected 0 (no budget) up to {MAX_NANOS / NANOS_PER_USD:.0f} dollars, "
            "at most 9 decimals"
        )
    return int(nanos)


count = bounded_int("a whole number", 0, MAX_NANOS)
"""A limit: 0 (no limit) up to ``MAX_NANOS``."""


def _usd(nanos: int) -> str:
    return f"${Decimal(nanos) / NANOS_PER_USD:f}" if nanos else "-"


def _shown(value: int) -> object:
    return value or "-"


def limits_output(info: admin_pb2.LimitsInfo) -> Output:
    limits = info.limits
    row = (
        info.tenant,
        info.key_id or "-",
        _shown(limits.requests_per_minute),
        _shown(limits.tokens_per_minute),
        _usd(limits.budget_day_nanos),
        _usd(limits.budget_month_nanos),
        ON_UNREACHABLE_FLAG[limits.on_unreachable] if not info.key_id else "-",
        _usd(info.spent_day_nanos) if limits.budget_day_nanos else "-",
        _usd(info.spent_month_nanos) if limits.budget_month_nanos else "-",
    )
    return Output(info, LIMITS_COLUMNS, [row])


async def limits_set(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.SetLimitsRequest(tenant=ns.tenant, key_id=ns.key or "")
    for field, value in (
        ("requests_per_minute", ns.requests_per_minute),
        ("tokens_per_minute", ns.tokens_per_minute),
        ("budget_day_nanos", ns.budget_day),
        ("budget_month_nanos", ns.budget_month),
    ):
        if value is not None:
            setattr(request, field, value)
    if ns.on_unreachable is not None:
        request.on_unreachable = next(v for v, n in ON_UNREACHABLE_FLAG.items() if n == ns.on_unreachable)
    return limits_output(await stub.SetLimits(request))


async def limits_get(stub: Stub, ns: argparse.Namespace) -> Output:
    return limits_output(
        await stub.GetLimits(admin_pb2.GetLimitsRequest(tenant=ns.tenant, key_id=ns.key or ""))
    )


async def limits_clear(stub: Stub, ns: argparse.Namespace) -> Output:
    return limits_output(
        await stub.ClearLimits(admin_pb2.ClearLimitsRequest(tenant=ns.tenant, key_id=ns.key or ""))
    )


def add_limits_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``limits set|get|clear`` under ``signalbox admin``."""
    resource = sub.add_parser("limits", help="rate limits and budgets of a tenant or an API key")
    verbs = resource.add_subparsers(dest="limits_verb", required=True, metavar="VERB")
    for name, action, help in (
        ("set", limits_set, "set the limits given, keep the others; 0 removes one (admin role)"),
        ("get", limits_get, "the limits, and what was spent today and this month"),
        ("clear", limits_clear, "remove every limit of the tenant or key (admin role)"),
    ):
        p = verbs.add_parser(name, help=help)
        p.set_defaults(admin_action=action)
        p.add_argument("--tenant", required=True, help="id or name")
        p.add_argument("--key", metavar="KEY_ID", help="an API key of the tenant; omit for the tenant's own")
        if name != "set":
            continue
        p.add_argument("--requests-per-minute", type=count, metavar="N")
        p.add_argument("--tokens-per-minute", type=count, metavar="N", help="input + output tokens")
        p.add_argument("--budget-day", type=usd_nanos, metavar="USD", help="per UTC day, e.g. 25.00")
        p.add_argument("--budget-month", type=usd_nanos, metavar="USD", help="per UTC month")
        p.add_argument(
            "--on-unreachable",
            choices=list(ON_UNREACHABLE_FLAG.values()),
            help="tenants only: while a node cannot lease quota, fail_open keeps serving at the rate "
            "of the last leases (default), fail_closed refuses (UNAVAILABLE)",
        )
