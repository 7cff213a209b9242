"""Usage and cost reports, computed from the shipped evidence records themselves.

Every figure comes from the stored records of the selection, in one scan with a grouping set
for the total, so a report's totals are the sum of the records ``QueryEvidence`` returns for
the same filters: there is no second bookkeeping to drift from the evidence. The filters and
the time range use the store's indexes (tenant, key, model, time); the members a report sums
live in the record body, read as ``jsonb`` by PostgreSQL.

Record bodies come from nodes: hostile input. Ingest checked that each is a JSON object and
that its chain holds, not that every member has the right type, so each member is read
defensively: a count that is not a plain non-negative integer of at most 18 digits counts as
0, a latency that is not a number is left out, and a report never fails on a record. A body
holding ``\\u0000`` (valid JSON, say a NUL in a FULL-content tenant's prompt, but refused by
``jsonb``) is read with that escape replaced by ``\\u2400`` (the same length, and valid JSON
wherever the original escape was). A number ``numeric`` cannot hold (``1e999999``, or 20,000
digits after the point: valid JSON, which ingest takes in a member it does not read, and which
would fail the whole report) can only be in a body ``_SUSPECT`` matches; such a body is read as
``json`` (text, no conversion), the members a report reads picked out of it (``_SAFE``), each
read as it would be from ``jsonb``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.errors import InvalidArgument, ResourceExhausted

DIMENSIONS = {
    "day": "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "tenant": "tenant_id",
    "key": "api_key_id",
    "model": "model",
}
"""What a report may be grouped by, and the SQL of each (from indexed columns)."""
MAX_GROUPS = 10_000


@dataclass(frozen=True, slots=True)
class UsageFilter:
    tenant_id: str = ""
    api_key_id: str = ""
    model: str = ""
    since: datetime | None = None
    until: datetime | None = None
    by: Sequence[str] = ()


@dataclass(slots=True)
class UsageRow:
    day: str = ""
    tenant_id: str = ""
    api_key_id: str = ""
    model: str = ""
    requests: int = 0
    errors: int = 0
    shadow_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_output_tokens: int = 0
    cost_nanos: int = 0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    latency_p99_ms: float = 0.0


@dataclass(slots=True)
class UsageReport:
    rows: list[UsageRow] = field(default_factory=list)
    total: UsageRow = field(default_factory=UsageRow)
    truncated: bool = False


def _count(path: str) -> str:
    """A non-negative integer member at ``path`` of the record, else 0."""
    member = f"j #>> '{{{path}}}'"
    return f"sum(CASE WHEN {member} ~ '^[0-9]{{1,18}}$' THEN ({member})::bigint ELSE 0 END)"


def _signed(path: str) -> str:
    member = f"j #>> '{{{path}}}'"
    return f"sum(CASE WHEN {member} ~ '^-?[0-9]{{1,18}}$' THEN ({member})::bigint ELSE 0 END)"


# A number as JSON writes one, with a bounded exponent (float8 cannot hold 1e400).
_LATENCY_NUMBER = "^-?[0-9]{1,18}(\\.[0-9]{1,18})?([eE][-+]?[0-9]{1,2})?$"
_LATENCY = (
    "CASE WHEN jsonb_typeof(j #> '{timings,total_ms}') = 'number' "
    f"AND (j #>> '{{timings,total_ms}}') ~ '{_LATENCY_NUMBER}' "
    "THEN (j #>> '{timings,total_ms}')::float8 END"
)
_REQUEST = "coalesce(j ->> 'kind', '') <> 'shadow'"

# A JSON number with an exponent of 4 digits or more (PostgreSQL before 15 refuses one above
# 1000), or 255 digits in a row (numeric keeps at most 16,383 after the point). Hex digests
# are not numbers: a number follows ':', ',' or '['. Matching more (text in a string) is
# harmless: ``_SAFE`` reads such a body as ``jsonb`` would.
_SUSPECT = (
    "t ~ '[:,[]\\s*-?[0-9]+(\\.[0-9]+)?[eE][-+]?0*[1-9][0-9]{3}' OR t ~ '[0-9]{255}'"  # faster than '|'
)


def _text(path: str) -> str:
    return f"to_jsonb(t::json #>> '{{{path}}}')"


# The members ``_MEASURES`` reads, from the body as ``json``: a count as its text (its test is
# on the text), the latency as the same ``jsonb`` number when it is one ``_LATENCY`` takes.
_MS = "t::json #> '{timings,total_ms}'"
_SAFE = f"""jsonb_build_object(
    'kind', to_jsonb(t::json ->> 'kind'),
    'usage', jsonb_build_object(
        'input_tokens', {_text("usage,input_tokens")},
        'output_tokens', {_text("usage,output_tokens")},
        'cached_input_tokens', {_text("usage,cached_input_tokens")},
        'reasoning_output_tokens', {_text("usage,reasoning_output_tokens")}),
    'cost', jsonb_build_object('total_nanos', {_text("cost,total_nanos")}),
    'timings', jsonb_build_object('total_ms', CASE WHEN json_typeof({_MS}) = 'number'
        AND ({_MS} #>> '{{}}') ~ '{_LATENCY_NUMBER}' THEN ({_MS} #>> '{{}}')::jsonb END))"""

_MEASURES = f"""
    count(*) FILTER (WHERE {_REQUEST}) AS requests,
    count(*) FILTER (WHERE {_REQUEST} AND outcome <> 'OK') AS errors,
    count(*) FILTER (WHERE NOT ({_REQUEST})) AS shadow_calls,
    {_count("usage,input_tokens")} AS input_tokens,
    {_count("usage,output_tokens")} AS output_tokens,
    {_count("usage,cached_input_tokens")} AS cached_input_tokens,
    {_count("usage,reasoning_output_tokens")} AS reasoning_output_tokens,
    {_signed("cost,total_nanos")} AS cost_nanos,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY {_LATENCY}) FILTER (WHERE {_REQUEST}) AS p50,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY {_LATENCY}) FILTER (WHERE {_REQUEST}) AS p95,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY {_LATENCY}) FILTER (WHERE {_REQUEST}) AS p99
"""


DEFAULT_TIMEOUT_S = 60.0


class UsageReports:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """``timeout``: seconds one report may run in the database."""
        self._sessions = sessions
        self.timeout = timeout

    async def report(self, f: UsageFilter) -> UsageReport:
        by = list(dict.fromkeys(f.by))
        for i, name in enumerate(by):
            if name not in DIMENSIONS:
                raise InvalidArgument(
                    f"by[{i}]", f"unknown dimension {name[:40]!r}; one of {', '.join(DIMENSIONS)}"
                )
        if f.since is not None and f.until is not None and f.since >= f.until:
            raise InvalidArgument("until", "must be after since")
        clauses, params = ["TRUE"], dict[str, Any]()
        for column, value in (("tenant_id", f.tenant_id), ("api_key_id", f.api_key_id), ("model", f.model)):
            if value:
                clauses.append(f"{column} = :{column}")
                params[column] = value
        for name, op, when in (("since", ">=", f.since), ("until", "<", f.until)):
            if when is not None:
                clauses.append(f"ts {op} :{name}")
                params[name] = when
        groups = [f"{DIMENSIONS[name]}" for name in by]
        selected = ", ".join(f"{sql} AS {name}" for name, sql in zip(by, groups, strict=True))
        # One scan: the groups and, as the empty grouping set, the total of the selection.
        sets = f"GROUPING SETS (({', '.join(groups)}), ())" if groups else "()"
        is_total = f"GROUPING({', '.join(groups)}) <> 0" if groups else "TRUE"
        sql = f"""
            SELECT {selected + "," if selected else ""} {is_total} AS is_total, {_MEASURES}
            FROM (
                SELECT ts, tenant_id, api_key_id, model, outcome,
                       CASE WHEN {_SUSPECT} THEN {_SAFE} ELSE t::jsonb END AS j
                FROM (
                    SELECT ts, tenant_id, api_key_id, model, outcome,
                           replace(convert_from(body, 'UTF8'), '\\u0000', '\\u2400') AS t
                    FROM evidence_records WHERE {" AND ".join(clauses)}
                    OFFSET 0
                ) s
                -- Each OFFSET 0 keeps its subquery whole: t and j are made once per record, not
                -- once per use (a report reads j a dozen times; without it, 4 times slower).
                OFFSET 0
            ) r
            GROUP BY {sets}
            ORDER BY is_total DESC, {", ".join(str(i + 1) for i in range(len(by))) or "1"}
            LIMIT {MAX_GROUPS + 2}
        """
        async with self._sessions() as session, session.begin():
            # A report over years of evidence must not hold the database: bounded, and refused
            # with a message that says how to narrow it.
            await session.execute(sa.text(f"SET LOCAL statement_timeout = {int(self.timeout * 1000)}"))
            try:
                result = (await session.execute(sa.text(sql), params)).mappings().all()
            except sa.exc.OperationalError as exc:
                if "statement timeout" not in str(exc.orig):
                    raise
                raise ResourceExhausted(
                    f"the report took longer than {self.timeout:g}s: narrow --since/--until or the filters"
                ) from None
        report = UsageReport()
        for row in result:
            usage = UsageRow(
                **{_FIELD[name]: row[name] or "" for name in by},
                requests=row["requests"],
                errors=row["errors"],
                shadow_calls=row["shadow_calls"],
                input_tokens=int(row["input_tokens"] or 0),
                output_tokens=int(row["output_tokens"] or 0),
                cached_input_tokens=int(row["cached_input_tokens"] or 0),
                reasoning_output_tokens=int(row["reasoning_output_tokens"] or 0),
                cost_nanos=int(row["cost_nanos"] or 0),
                latency_p50_ms=float(row["p50"] or 0.0),
                latency_p95_ms=float(row["p95"] or 0.0),
                latency_p99_ms=float(row["p99"] or 0.0),
            )
            if row["is_total"]:
                report.total = usage
            elif len(report.rows) < MAX_GROUPS:
                report.rows.append(usage)
            else:
                report.truncated = True
        return report


_FIELD = {"day": "day", "tenant": "tenant_id", "key": "api_key_id", "model": "model"}
