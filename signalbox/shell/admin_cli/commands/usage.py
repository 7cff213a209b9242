"""``signalbox admin usage``: usage and cost reports from shipped evidence."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from signalbox.api.admin.v1 import admin_pb2
from signalbox.shell.admin_cli.commands.base import Stub
from signalbox.shell.admin_cli.output import Output, table
from signalbox.text import printable

USAGE_DIMENSIONS = ("day", "tenant", "key", "model")
_FIELD = {"day": "day", "tenant": "tenant_id", "key": "api_key_id", "model": "model"}
MEASURES = ("requests", "errors", "input_tokens", "output_tokens", "cost_usd", "p50_ms", "p95_ms")


async def usage_report(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.GetUsageRequest(
        tenant_id=ns.tenant or "", api_key_id=ns.api_key or "", model=ns.model or "", by=ns.by
    )
    if ns.since is not None:
        request.since.FromDatetime(ns.since)
    if ns.until is not None:
        request.until.FromDatetime(ns.until)
    r = await stub.GetUsage(request)
    if r.HasField("pruned_before"):
        print(
            f"(records older than {r.pruned_before.ToDatetime(UTC).isoformat()} were pruned by retention: "
            "the report covers what is stored)",
            file=sys.stderr,
        )
    if r.truncated:
        print(f"(more groups than {len(r.rows)}: narrow the filters or group by less)", file=sys.stderr)
    headers = [*ns.by, *MEASURES]
    rows = [_cells(row, ns.by) for row in r.rows]
    total = _cells(r.total, ns.by, label="TOTAL")
    if ns.csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows([headers, *rows, total])
        return Output(r, text=out.getvalue())
    return Output(r, text=table(headers, [*rows, total]) + "\n")


def _cells(row: admin_pb2.UsageRow, by: list[str], label: str = "") -> list[str]:
    dims = [label if label else printable(getattr(row, _FIELD[name]), 80) for name in by]
    if label and dims:
        dims[1:] = [""] * (len(dims) - 1)
    return [
        *dims,
        str(row.requests),
        str(row.errors),
        str(row.input_tokens),
        str(row.output_tokens),
        f"{row.cost_nanos / 1e9:.6f}",
        f"{row.latency_p50_ms:.1f}",
        f"{row.latency_p95_ms:.1f}",
    ]


# ---- signalbox admin top ----

TOP_COLUMNS = ("tenant", "model", "req/s", "errors", "p50_ms", "p99_ms", "usd/min")
TOP_NODE_COLUMNS = ("node", "group", "applied", "lag", "connected", "state")


async def top(stub: Stub, ns: argparse.Namespace) -> Output:
    """One frame of ``signalbox admin top``: the last ``--window`` seconds of shipped evidence
    by tenant and model, and the fleet's convergence (``--watch`` redraws it)."""
    now = datetime.now(UTC)
    request = admin_pb2.GetUsageRequest(tenant_id=ns.tenant or "", by=["tenant", "model"])
    request.since.FromDatetime(now - timedelta(seconds=ns.window))
    request.until.FromDatetime(now)
    usage = await stub.GetUsage(request)
    per_second, per_minute = 1 / ns.window, 60 / ns.window
    t = usage.total
    lines = [
        f"last {ns.window:g}s of shipped evidence: {t.requests * per_second:.1f} req/s, "
        f"errors {_share(t.errors, t.requests)}, p50 {t.latency_p50_ms:.1f} ms, p99 {t.latency_p99_ms:.1f} ms, "
        f"${t.cost_nanos / 1e9 * per_minute:.6f}/min",
        "",
        table(
            TOP_COLUMNS,
            [
                (
                    printable(r.tenant_id, 40),
                    printable(r.model, 40) or "-",
                    f"{r.requests * per_second:.1f}",
                    _share(r.errors, r.requests),
                    f"{r.latency_p50_ms:.1f}",
                    f"{r.latency_p99_ms:.1f}",
                    f"{r.cost_nanos / 1e9 * per_minute:.6f}",
                )
                for r in sorted(usage.rows, key=lambda r: -r.requests)
            ],
        ),
        "",
    ]
    try:
        nodes = (await stub.ListNodes(admin_pb2.ListNodesRequest())).nodes
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
            raise
        lines.append("nodes: not shown to this identity (platform roles only)")
    else:
        behind = sum(1 for n in nodes if n.lag)
        lines.append(f"nodes: {len(nodes)}, {behind} behind their group's newest snapshot")
        lines.append(
            table(
                TOP_NODE_COLUMNS,
                [
                    (
                        printable(n.node_id, 60),
                        printable(n.node_group, 40),
                        f"v{n.applied_version}",
                        n.lag,
                        "yes" if n.connected else "no",
                        "STALE" if n.stale else "ok",
                    )
                    for n in nodes
                ],
            )
        )
    return Output(usage, text="\n".join(lines) + "\n")


def _share(part: int, whole: int) -> str:
    return f"{part / whole * 100:.1f}%" if whole else "-"


# ---- the commands' arguments ----

ArgType = Callable[[str], Any]


def add_usage_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], *, utc_time: ArgType, positive_seconds: ArgType
) -> None:
    """``usage`` and ``top`` under ``signalbox admin`` (``utc_time`` and ``positive_seconds``:
    the parser's argument types for times and durations)."""
    p = sub.add_parser(
        "usage",
        help="requests, errors, tokens, cost and latency from shipped evidence, grouped (--by) and totalled",
    )
    p.set_defaults(admin_action=usage_report)
    p.add_argument("--tenant", help="tenant id or name (a tenant admin's own by default)")
    p.add_argument("--key", "--api-key", dest="api_key", help="API key id")
    p.add_argument("--model", help="the model that served")
    p.add_argument(
        "--since", type=utc_time, help="records at or after this time (ISO 8601; UTC when no zone)"
    )
    p.add_argument("--until", type=utc_time, help="records before this time (ISO 8601; UTC when no zone)")
    p.add_argument(
        "--by",
        type=_dimensions,
        default=[],
        help="group by any of day, tenant, key, model, comma-separated (default: the total only)",
    )
    p.add_argument("--csv", action="store_true", help="CSV (a header line, the groups, then the total)")

    p = sub.add_parser(
        "top",
        help="live view: requests/s, errors, p50/p99 and cost per minute by tenant and model, and the "
        "nodes' convergence (from shipped evidence; Ctrl-C to stop)",
    )
    p.set_defaults(admin_action=top, watch=True)
    p.add_argument("--tenant", help="one tenant's (a tenant admin's own by default)")
    p.add_argument(
        "--window",
        type=positive_seconds,
        default=60.0,
        help="seconds of evidence each frame covers (default 60)",
    )
    p.add_argument(
        "--interval", type=positive_seconds, default=2.0, help="seconds between redraws (default 2)"
    )
    p.add_argument("--once", dest="watch", action="store_false", help="print one frame and exit")
    p.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)


def _dimensions(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in USAGE_DIMENSIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown dimension {unknown[0][:40]!r}; one of {', '.join(USAGE_DIMENSIONS)}"
        )
    return names
