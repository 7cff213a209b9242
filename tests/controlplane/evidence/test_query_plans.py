"""Each filter admins query evidence by reads its index (the issue: "indexed for queries by
correlation id, tenant, API key, model, outcome and time"), read from PostgreSQL's own plans
over a store of 20,000 records with statistics, as the application sends the queries: the
query of ``EvidenceQueries.records`` and the export's condition, with bound parameters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from controlplane.db.embedded import EmbeddedPostgres
from controlplane.evidence.export import _where
from controlplane.evidence.queries import EvidenceFilter, records_query
from controlplane.evidence.retention import RECEIVED_SINCE
from tests.fixtures.postgres import _fresh_database, sql_rows

RECORDS = 20_000
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)

# Like a fleet's: a chain per node, 50 tenants, 500 keys, 400 models, correlation ids unique,
# nine records in ten served (``OK``), a few refusals of several kinds, one day long.
SEED = f"""
INSERT INTO evidence_records (chain_id, seq, ts, record_id, hash, prev_hash, node_id, correlation_id,
                              tenant_id, api_key_id, model, outcome, body)
SELECT 'node-' || (i % 4) || '/0', i, '{NOW.isoformat()}'::timestamptz - make_interval(secs => i * 4.32), 'r' || i,
       sha256(int8send(i)), sha256(int8send(i - 1)), 'node-' || (i % 4), 'corr-' || md5(i::text),
       'tenant-' || (i % 50), 'key-' || (i % 500), 'model-' || (i % 400),
       CASE WHEN i % 10 <> 0 THEN 'OK' WHEN i % 30 = 0 THEN 'RESOURCE_EXHAUSTED'
            WHEN i % 20 = 0 THEN 'INVALID_ARGUMENT' ELSE 'PERMISSION_DENIED' END,
       '\\x7b7d'
FROM generate_series(1, {RECORDS}) AS i
"""


@pytest.fixture(scope="module")
def store(postgres_server: EmbeddedPostgres, _migrated_template: str) -> Iterator[str]:
    """One seeded database for the module: the plans only read it."""
    for url in _fresh_database(postgres_server, _migrated_template):
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            conn.execute(SEED)
            conn.execute("ANALYZE evidence_records")
        yield url


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _indexes(url: str, sql: str, params: dict[str, Any]) -> set[str]:
    """The ``evidence_records`` indexes (the parent's names) a plan of ``sql`` reads."""
    with psycopg.connect(_libpq(url)) as conn:
        (plan,) = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()  # type: ignore[misc]
        names: set[str] = set()

        def walk(node: dict[str, Any]) -> None:
            if "Index Name" in node:
                names.add(node["Index Name"])
            for child in node.get("Plans", ()):
                walk(child)

        walk((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])
        parents = conn.execute(
            "SELECT child.relname, parent.relname FROM pg_inherits JOIN pg_class child ON child.oid = inhrelid "
            "JOIN pg_class parent ON parent.oid = inhparent WHERE child.relname = ANY(%s)",
            (list(names),),
        ).fetchall()
    return {dict(parents).get(name, name) for name in names}


def _records_sql(f: EvidenceFilter) -> tuple[str, dict[str, Any]]:
    query, _ = records_query(f)
    compiled = query.compile(dialect=postgresql.psycopg.dialect())  # type: ignore[attr-defined]
    return str(compiled), dict(compiled.params)


CASES = [
    (
        EvidenceFilter(correlation_id="corr-" + "c4ca4238a0b923820dcc509a6f75849b"),
        "ix_evidence_records_correlation_id",
    ),
    (EvidenceFilter(tenant_id="tenant-7"), "ix_evidence_records_tenant_ts"),
    (EvidenceFilter(api_key_id="key-42"), "ix_evidence_records_api_key_ts"),
    (EvidenceFilter(model="model-1"), "ix_evidence_records_model_ts"),
    (EvidenceFilter(outcome="RESOURCE_EXHAUSTED"), "ix_evidence_records_refused_ts"),
    (
        EvidenceFilter(outcome="PERMISSION_DENIED", until=NOW - timedelta(hours=12)),
        "ix_evidence_records_refused_ts",
    ),
    (EvidenceFilter(since=NOW - timedelta(minutes=10)), "ix_evidence_records_ts"),
    # Served records are most of any range: read newest first by time, not by outcome.
    (EvidenceFilter(outcome="OK"), "ix_evidence_records_ts"),
]
IDS = ["correlation", "tenant", "key", "model", "one-refusal", "refusal-until", "since", "served"]


@pytest.mark.parametrize(("f", "index"), CASES, ids=IDS)
def test_a_records_query_reads_the_index_of_its_filter(store: str, f: EvidenceFilter, index: str) -> None:
    sql, params = _records_sql(f)
    assert index in _indexes(store, sql, params)


@pytest.mark.parametrize(
    ("f", "index"),
    [
        (
            EvidenceFilter(correlation_id="corr-" + "c4ca4238a0b923820dcc509a6f75849b"),
            "ix_evidence_records_correlation_id",
        ),
        (
            EvidenceFilter(outcome="INVALID_ARGUMENT"),
            "ix_evidence_records_refused_ts",
        ),
        (
            EvidenceFilter(tenant_id="tenant-3"),
            "ix_evidence_records_tenant_ts",
        ),
    ],
    ids=["correlation", "refusals", "tenant"],
)
def test_an_exports_condition_reads_the_index_of_its_filter(
    store: str, f: EvidenceFilter, index: str
) -> None:
    where, params = _where(f)
    sql = sa.text(f"SELECT chain_id, seq FROM evidence_records WHERE {where}").compile(
        dialect=postgresql.psycopg.dialect()  # type: ignore[attr-defined]
    )
    assert index in _indexes(store, str(sql), params)


def test_retention_finds_a_months_recent_receipts_by_its_index(store: str) -> None:
    """Each retention round asks every month past the cut-off whether it holds a record
    received since; a scan of the month each time, without the index."""
    partition = sql_rows(
        store,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'evidence_records'::regclass ORDER BY pg_relation_size(c.oid) DESC LIMIT 1",
    )[0][0]
    sql = sa.text(RECEIVED_SINCE.format(name=partition)).compile(
        dialect=postgresql.psycopg.dialect()  # type: ignore[attr-defined]
    )
    params = {"b": datetime.now(UTC) + timedelta(days=1)}
    assert "ix_evidence_records_received_at" in _indexes(store, str(sql), params)


def test_the_served_records_are_not_in_the_refusals_index(store: str) -> None:
    with psycopg.connect(_libpq(store)) as conn:
        sizes = dict(
            conn.execute(
                "SELECT parent.relname, sum(pg_relation_size(child.oid)) FROM pg_inherits "
                "JOIN pg_class child ON child.oid = inhrelid JOIN pg_class parent ON parent.oid = inhparent "
                "WHERE parent.relname IN ('ix_evidence_records_refused_ts', 'ix_evidence_records_tenant_ts') "
                "GROUP BY parent.relname"
            ).fetchall()
        )
    # One record in ten is a refusal: its index is a fraction of a full one's size.
    assert sizes["ix_evidence_records_refused_ts"] * 4 < sizes["ix_evidence_records_tenant_ts"]
