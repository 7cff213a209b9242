"""``signalbox admin usage``: usage and cost reports from shipped evidence. Their totals are
the sum of the records the store returns for the same filters; hostile member types never
break a report; a tenant admin sees its own tenant only."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.records import GENESIS_HASH, encode_record, stored_line
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.controlplane.evidence.conftest import Stream
from tests.controlplane.test_cli import _signalbox
from tests.fixtures.postgres import RunningControlPlane

MODELS = ("small", "large")


def _record(i: int, tenant: str) -> dict[str, Any]:
    """Varied records: two keys, two models, errors, a shadow call, and every few records a
    member of the wrong type that a report must read as nothing rather than fail on."""
    record: dict[str, Any] = {
        "ts": time.time(),
        "kind": "shadow" if i % 11 == 5 else "chat",
        "correlation_id": f"corr-{i}",
        "tenant_id": tenant,
        "api_key_id": f"key-{i % 2}",
        "routing": {"served_by": {"model": MODELS[i % 3 == 0]}},
        "usage": {"input_tokens": 10 + i, "output_tokens": 3 * i, "cached_input_tokens": i % 4},
        "cost": {"currency": "USD", "total_nanos": 1_000 * (i + 1)},
        "timings": {"total_ms": 1.5 + (i * 7) % 13},
        "outcome": {"code": "OK" if i % 4 else "UNAVAILABLE"},
    }
    if i % 3 == 1:
        # A reasoning model's; records of other models (and records written before the node
        # recorded it) have no such member, read as 0.
        record["usage"]["reasoning_output_tokens"] = 2 * i
    if i % 7 == 3:
        record["usage"]["input_tokens"] = "lots"
    if i % 13 == 4:
        record["usage"]["reasoning_output_tokens"] = -5
    if i % 9 == 4:
        record["timings"]["total_ms"] = "slow"
    if i % 10 == 6:
        # Valid JSON that PostgreSQL's jsonb refuses as it stands.
        record["correlation_id"] = "nul\x00here"
    return record


async def _ship(stream: Stream, directory: Path, records: list[dict[str, Any]]) -> None:
    async with EvidenceLog(log_path(directory, "node-a"), "node-a") as log:
        for record in records:
            log.append(record)
    lines = log_path(directory, "node-a").read_bytes().splitlines(keepends=True)
    assert (await stream.ship("node-a/0", lines)).head_seq == len(records)


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _expected(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """What the report must say, from the records as the store returns them."""
    requests = [b for b in bodies if b.get("kind") != "shadow"]
    latencies = sorted(
        b["timings"]["total_ms"] for b in requests if isinstance(b["timings"]["total_ms"], int | float)
    )
    return {
        "requests": len(requests),
        "errors": sum(1 for b in requests if b["outcome"]["code"] != "OK"),
        "shadow_calls": len(bodies) - len(requests),
        "input_tokens": sum(_count(b["usage"]["input_tokens"]) for b in bodies),
        "output_tokens": sum(_count(b["usage"]["output_tokens"]) for b in bodies),
        "cached_input_tokens": sum(_count(b["usage"]["cached_input_tokens"]) for b in bodies),
        "reasoning_output_tokens": sum(_count(b["usage"].get("reasoning_output_tokens")) for b in bodies),
        "cost_nanos": sum(b["cost"]["total_nanos"] for b in bodies),
        "latency_p50_ms": _percentile(latencies, 0.5),
        "latency_p95_ms": _percentile(latencies, 0.95),
        "latency_p99_ms": _percentile(latencies, 0.99),
    }


def _percentile(values: list[float], p: float) -> float:
    """PostgreSQL's percentile_cont: linear between the two nearest ranks; 0 for none."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(p * 100) - 1]


FIGURES = (
    "requests",
    "errors",
    "shadow_calls",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_output_tokens",
    "cost_nanos",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
)


def _figures(row: admin_pb2.UsageRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in FIGURES}


async def _stored(
    admin: admin_pb2_grpc.AdminServiceStub, metadata: Any, **filters: Any
) -> list[dict[str, Any]]:
    found = await admin.QueryEvidence(
        admin_pb2.QueryEvidenceRequest(limit=1000, **filters), metadata=metadata
    )
    assert not found.truncated
    return [json.loads(r.body) for r in found.records]


@pytest.fixture
async def tenants(evidence_plane: RunningControlPlane) -> tuple[str, str]:
    async with grpc.aio.insecure_channel(evidence_plane.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        acme = await admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name="acme"), metadata=evidence_plane.metadata
        )
        beta = await admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name="beta"), metadata=evidence_plane.metadata
        )
    return acme.id, beta.id


async def test_usage_totals_equal_the_sum_of_the_evidence_records_for_the_same_filters(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], tenants: tuple[str, str]
) -> None:
    acme, beta = tenants
    stream, directory = node
    await _ship(stream, directory, [_record(i, acme if i % 5 else beta) for i in range(60)])
    metadata = evidence_plane.metadata
    async with grpc.aio.insecure_channel(evidence_plane.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for filters in (
            {},
            {"tenant_id": acme},
            {"tenant_id": beta, "model": "large"},
            {"api_key_id": "key-1", "model": "small"},
        ):
            report = await admin.GetUsage(admin_pb2.GetUsageRequest(**filters), metadata=metadata)
            assert _figures(report.total) == pytest.approx(
                _expected(await _stored(admin, metadata, **filters))
            )
            assert list(report.rows) == []

        # Grouped: one row per (model, key), each the sum of its own records; the total as before.
        report = await admin.GetUsage(
            admin_pb2.GetUsageRequest(tenant_id=acme, by=["model", "key"]), metadata=metadata
        )
        assert [(r.model, r.api_key_id) for r in report.rows] == [
            ("large", "key-0"),
            ("large", "key-1"),
            ("small", "key-0"),
            ("small", "key-1"),
        ]
        for row in report.rows:
            stored = await _stored(
                admin, metadata, tenant_id=acme, model=row.model, api_key_id=row.api_key_id
            )
            assert _figures(row) == pytest.approx(_expected(stored))
        assert _figures(report.total) == pytest.approx(
            _expected(await _stored(admin, metadata, tenant_id=acme))
        )
        assert sum(r.requests for r in report.rows) == report.total.requests

        # A window that holds nothing: zeros, not an error.
        empty = admin_pb2.GetUsageRequest(by=["day"])
        empty.until.FromDatetime(datetime(2000, 1, 1, tzinfo=UTC))
        report = await admin.GetUsage(empty, metadata=metadata)
        assert (list(report.rows), report.total.requests, report.total.cost_nanos) == ([], 0, 0)

        for bad, message in (
            (admin_pb2.GetUsageRequest(by=["week"]), "by[0]: unknown dimension 'week'"),
            (admin_pb2.GetUsageRequest(by=["x" * 5000]), "by[0]: at most 200 characters"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin.GetUsage(bad, metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (refused.value.details() or "")
            assert len(refused.value.details() or "") < 300


async def test_the_usage_command_prints_a_table_csv_or_json_and_a_tenant_admin_sees_its_own(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], tenants: tuple[str, str]
) -> None:
    acme, beta = tenants
    stream, directory = node
    await _ship(stream, directory, [_record(i, acme if i % 2 else beta) for i in range(20)])
    base = ("admin", "--target", evidence_plane.address, "--token", evidence_plane.token)
    today = datetime.now(UTC).strftime("%Y-%m-%d")

    code, out, err = await _signalbox(*base, "usage", "--by", "day,tenant")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "DAY",
        "TENANT",
        "REQUESTS",
        "ERRORS",
        "INPUT_TOKENS",
        "OUTPUT_TOKENS",
        "COST_USD",
        "P50_MS",
        "P95_MS",
    ]
    assert sorted(line.split()[1] for line in lines[1:3]) == sorted([acme, beta])
    assert {line.split()[0] for line in lines[1:3]} == {today}
    assert lines[3].split()[0] == "TOTAL"

    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    code, out, err = await _signalbox(*base, "usage", "--by", "model", "--since", since, "--csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][:2] == ["model", "requests"]
    assert [r[0] for r in rows[1:]] == ["large", "small", "TOTAL"]
    assert int(rows[3][1]) == int(rows[1][1]) + int(rows[2][1])

    code, out, err = await _signalbox(*base, "--json", "usage", "--tenant", beta)
    assert code == 0, err
    async with grpc.aio.insecure_channel(evidence_plane.address) as channel:
        stored = await _stored(
            admin_pb2_grpc.AdminServiceStub(channel), evidence_plane.metadata, tenant_id=beta
        )
    assert int(json.loads(out)["total"]["requests"]) == _expected(stored)["requests"]

    code, _, err = await _signalbox(*base, "usage", "--by", "week")
    assert code != 0
    assert "unknown dimension 'week'" in err

    # A tenant admin of acme: its own tenant by default, beta's as if it did not exist.
    assert evidence_plane.cp.admin is not None
    _, token = await evidence_plane.cp.admin.create_token("acme-admin", role="tenant_admin", tenant=acme)
    own = ("admin", "--target", evidence_plane.address, "--token", token)
    code, out, err = await _signalbox(*own, "--json", "usage", "--by", "tenant")
    assert code == 0, err
    assert [r["tenant_id"] for r in json.loads(out)["rows"]] == [acme]
    code, _, err = await _signalbox(*own, "usage", "--tenant", beta)
    assert code != 0
    assert "NOT_FOUND" in err or "not found" in err


async def test_top_shows_rates_latency_and_cost_by_tenant_and_model_and_the_fleet(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], tenants: tuple[str, str]
) -> None:
    acme, beta = tenants
    stream, directory = node
    await _ship(stream, directory, [_record(i, acme if i % 2 else beta) for i in range(20)])
    base = ("admin", "--target", evidence_plane.address, "--token", evidence_plane.token)
    async with grpc.aio.insecure_channel(evidence_plane.address) as channel:
        stored = await _stored(admin_pb2_grpc.AdminServiceStub(channel), evidence_plane.metadata)
    figures = _expected(stored)

    code, out, err = await _signalbox(*base, "top", "--once", "--window", "3600")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        f"last 3600s of shipped evidence: {figures['requests'] / 3600:.1f} req/s, "
        f"errors {figures['errors'] / figures['requests'] * 100:.1f}%, p50 {figures['latency_p50_ms']:.1f} ms, "
        f"p99 {figures['latency_p99_ms']:.1f} ms, ${figures['cost_nanos'] / 1e9 / 60:.6f}/min"
    )
    assert lines[2].split() == ["TENANT", "MODEL", "REQ/S", "ERRORS", "P50_MS", "P99_MS", "USD/MIN"]
    assert {line.split()[0] for line in lines[3:7]} == {acme, beta}
    # The node that shipped them, as the fleet sees it.
    assert any(line.startswith("nodes: 1,") for line in lines)
    assert any(line.split()[:2] == ["node-a", "default"] for line in lines)

    # Redrawn: a frame per interval.
    code, out, err = await _signalbox(*base, "top", "--interval", "0.1", "--iterations", "2")
    assert code == 0, err
    assert out.count("(Ctrl-C to stop)") == 2

    # A tenant admin: its own tenant, and no fleet.
    assert evidence_plane.cp.admin is not None
    _, token = await evidence_plane.cp.admin.create_token("acme-top", role="tenant_admin", tenant=acme)
    code, out, err = await _signalbox(
        "admin", "--target", evidence_plane.address, "--token", token, "top", "--once", "--window", "3600"
    )
    assert code == 0, err
    assert beta not in out
    assert "nodes: not shown to this identity" in out


async def test_a_report_that_runs_too_long_is_refused_saying_how_to_narrow_it(
    evidence_plane: RunningControlPlane,
) -> None:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from controlplane.db.session import create_engine
    from controlplane.errors import ResourceExhausted
    from controlplane.evidence.usage import UsageFilter, UsageReports

    engine = create_engine(evidence_plane.database_url)
    holder = sa.create_engine(evidence_plane.database_url, poolclass=sa.NullPool)
    try:
        with holder.connect() as conn, conn.begin():
            # Another transaction holds the table: the report waits, and its time runs out.
            conn.execute(sa.text("LOCK TABLE evidence_records IN ACCESS EXCLUSIVE MODE"))
            reports = UsageReports(async_sessionmaker(engine), timeout=0.3)
            with pytest.raises(ResourceExhausted, match=r"took longer than 0\.3s: narrow --since/--until"):
                await reports.report(UsageFilter(by=["day"]))
        # And once the table is free, the same report runs.
        assert (await reports.report(UsageFilter(by=["day"]))).total.requests == 0
    finally:
        holder.dispose()
        await engine.dispose()


def _raw_lines(tenant: str, members: list[dict[str, str]]) -> list[bytes]:
    """node-a's chain as a hostile node writes it: record ``i`` with the JSON text of each
    entry of ``members[i]`` spliced in at its member path (``a.b``), each line hashed and
    linked as ingest checks."""
    lines, prev = [], GENESIS_HASH
    for seq, spliced in enumerate(members, start=1):
        record: dict[str, Any] = {
            "chain_id": "node-a/0",
            "node_id": "node-a",
            "seq": seq,
            "prev_hash": prev,
            "record_id": f"{seq:032x}",
            "ts": time.time(),
            "kind": "chat",
            "tenant_id": tenant,
            "usage": {"input_tokens": 10, "output_tokens": 1},
            "timings": {"total_ms": 2.0},
            "outcome": {"code": "OK"},
        }
        for i, path in enumerate(spliced):
            *parents, last = path.split(".")
            member = record
            for name in parents:
                member = member.setdefault(name, {})
            member[last] = f"SPLICED-{i}"
        body = encode_record(record)
        for i, text in enumerate(spliced.values()):
            body = body.replace(f'"SPLICED-{i}"'.encode(), text.encode())
        prev = hashlib.sha256(body).hexdigest()
        lines.append(stored_line(body, prev))
    return lines


async def test_a_number_postgresql_cannot_hold_in_a_record_never_fails_a_report(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    stream, _ = node
    huge_fraction = "0." + "0" * 20_000 + "1"
    # Numbers JSON allows, beyond what PostgreSQL's numeric holds, where ingest does not look.
    lines = _raw_lines(
        acme,
        [
            {},  # an ordinary record
            {"extra": "1e999999"},  # a member no report reads
            {"usage.input_tokens": "1e-999999"},
            {"usage.output_tokens": "-12e131072"},
            {"timings.total_ms": huge_fraction},
            {"timings.total_ms": "1E+0000000000000000000016384"},
            {"cost.x": "1." + "0" * 7000 + "1e-9999"},
            # An honest record whose text looks like such numbers is read all the same.
            {"content.response": '"ratio:1e12345, [' + "7" * 300 + '"', "timings.total_ms": "6.0"},
        ],
    )
    assert (await stream.ship("node-a/0", lines)).head_seq == len(lines)
    async with grpc.aio.insecure_channel(evidence_plane.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for by in ([], ["day", "tenant"]):
            report = await admin.GetUsage(admin_pb2.GetUsageRequest(by=by), metadata=evidence_plane.metadata)
            # Every record counts as a request; a number out of range reads as nothing.
            assert (report.total.requests, report.total.errors) == (8, 0)
            assert (report.total.input_tokens, report.total.output_tokens) == (70, 7)
            assert report.total.latency_p50_ms == 2.0
            assert report.total.latency_p99_ms == pytest.approx(2 + 0.95 * 4)
