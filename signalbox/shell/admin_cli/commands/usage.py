"""``signalbox admin usage``: usage and cost reports from shipped evidence."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from datetime import UTC

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
