"""Bulk import of tenants and API keys from JSON Lines: all or nothing, one snapshot.

Each line mirrors a create command (``CreateTenantRequest``, ``CreateApiKeyRequest``)
with a ``kind``. Every line is checked first, as the one-by-one calls would check it;
any problem refuses the whole file with the first ``MAX_ERRORS`` problems, each naming
its line and field. Then one config change inserts the rows in bulk and publishes one
snapshot. Keys are generated here and returned once; only their HMAC-SHA256 under the
API-key hash key is kept.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.api_key_hash import ApiKeyHasher, HashKeyRing
from controlplane.db.models import ApiKey, Tenant
from controlplane.errors import InvalidArgument, clip, shown
from controlplane.limits import (
    MAP_ENTRIES,
    MAP_KEY_CHARS,
    MAP_VALUE_CHARS,
    NAME_CHARS,
    TIER_CHARS,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
)
from controlplane.services.base import Caller, UnitOfWork, check_name
from controlplane.services.keys import VISIBLE_PREFIX_CHARS, new_api_key
from dataplane.scopes import ScopeSyntaxError, validate_scopes

MAX_BYTES = 48 * 1024 * 1024
"""Largest file accepted (60,000 lines of a few hundred bytes fit many times)."""
MAX_LINES = 500_000
MAX_ERRORS = 10
"""Problems named in a refusal (the status message is bounded too)."""

_FIELDS = {
    "tenant": {"kind", "name", "tier", "labels"},
    "api_key": {"kind", "tenant", "name", "scopes", "expires_at"},
}


class ImportRejected(InvalidArgument):
    """The file was refused as a whole; ``problems`` are ``(line, field, problem)``."""

    def __init__(self, problems: Sequence[tuple[int, str, str]], total: int) -> None:
        # Each problem clipped, so the first ones all fit in a status message (1 KiB).
        listed = "; ".join(f"line {line}: {name}: {clip(problem, 48)}" for line, name, problem in problems)
        first = f" (the first {len(problems)})" if total > len(problems) else ""
        super().__init__("jsonl", f"{total} problem(s), nothing imported{first}: {listed}")
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class ImportedKey:
    line: int
    row: ApiKey
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class _KeyLine:
    number: int
    tenant: str
    name: str
    scopes: list[str]
    expires_at: datetime | None


@dataclass(slots=True)
class _Check:
    problems: list[tuple[int, str, str]] = field(default_factory=list)
    total: int = 0

    def add(self, line: int, name: str, problem: str) -> None:
        self.total += 1
        if len(self.problems) < MAX_ERRORS:
            self.problems.append((line, name, problem))


def _text_problem(value: str, limit: int) -> str:
    """What keeps ``value`` out of a text column ("" when nothing): the limits CreateTenant and
    CreateApiKey hold their fields to (``controlplane.limits``). JSON can also spell what a
    protobuf string cannot carry: ``\\u0000`` (no text column holds NUL) and lone surrogates
    (not encodable as UTF-8); rows go in by COPY, where either was an INTERNAL from the driver."""
    if "\x00" in value:
        return "must not contain NUL"
    if len(value) > limit:
        return f"at most {limit} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return ""


def _str(check: _Check, line: int, obj: dict[str, Any], name: str, limit: int) -> str:
    value = obj.get(name, "")
    if not isinstance(value, str):
        check.add(line, name, "must be a string")
        return ""
    if problem := _text_problem(value, limit):
        check.add(line, name, problem)
    return value


def _labels(check: _Check, line: int, obj: dict[str, Any]) -> dict[str, str]:
    value = obj.get("labels", {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        check.add(line, "labels", "must be an object of strings")
        return {}
    if any(not k for k in value):
        check.add(line, "labels", "keys must not be empty")
    if len(value) > MAP_ENTRIES:
        check.add(line, "labels", f"at most {MAP_ENTRIES} entries")
        return {}
    for key, item in value.items():
        if problem := _text_problem(key, MAP_KEY_CHARS):
            check.add(line, "labels key", problem)
        elif problem := _text_problem(item, MAP_VALUE_CHARS):
            check.add(line, f"labels.{clip(key)}", problem)
    return dict(value)


def _expiry(check: _Check, line: int, obj: dict[str, Any], now: datetime) -> datetime | None:
    value = obj.get("expires_at")
    if value is None or value == "":
        return None
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        check.add(line, "expires_at", "must be an RFC 3339 time with an offset, e.g. 2027-01-01T00:00:00Z")
        return None
    if not TIMESTAMP_MIN_SECONDS <= when.timestamp() <= TIMESTAMP_MAX_SECONDS:
        # A local time near year 9999 whose UTC is past it: no Timestamp can carry it.
        check.add(line, "expires_at", "must be between 0001-01-01 and 9999-12-31 (UTC)")
        return None
    if when <= now:
        check.add(line, "expires_at", "must be in the future")
    return when


@dataclass(slots=True)
class ImportService:
    uow: UnitOfWork
    hash_keys: HashKeyRing

    async def run(self, caller: Caller, data: bytes) -> tuple[int, list[ImportedKey], int]:
        """Import ``data``; returns (tenants created, keys with their secrets, snapshot version)."""
        now = datetime.now(UTC)
        tenants, keys = await asyncio.to_thread(_parse, data, now)
        check = _Check()
        async with self.uow.change(caller, f"import {len(tenants)} tenants, {len(keys)} api keys") as change:
            session = change.session
            if tenants:
                taken = set(
                    (await session.scalars(select(Tenant.name).where(Tenant.name.in_(list(tenants))))).all()
                )
                for name in sorted(taken, key=lambda n: tenants[n][0]):
                    check.add(tenants[name][0], "name", f"tenant {shown(name)} already exists")
            ids = {name: uuid.uuid4() for name in tenants}
            wanted = {k.tenant for k in keys} - set(ids)
            if wanted:
                by_name = await session.execute(
                    select(Tenant.name, Tenant.id).where(Tenant.name.in_(list(wanted)))
                )
                found: dict[str, uuid.UUID] = {name: ident for name, ident in by_name}
                as_ids = [u for w in wanted - set(found) if (u := _uuid(w)) is not None]
                if as_ids:
                    by_id = await session.scalars(select(Tenant.id).where(Tenant.id.in_(as_ids)))
                    found.update({str(i): i for i in by_id.all()})
                for key in keys:
                    if key.tenant not in ids and key.tenant not in found:
                        check.add(
                            key.number, "tenant", f"tenant {shown(key.tenant)} not found (nor in this file)"
                        )
                ids.update(found)
            if check.total:
                raise ImportRejected(check.problems, check.total)
            # COPY, with the rows formatted in a worker thread: the event loop only passes
            # bytes on (an INSERT of 50,000 rows built its statements on the loop: 0.6 s).
            if tenants:
                data = await asyncio.to_thread(_tenant_copy, tenants, ids, now)
                await _copy(session, "tenants", _TENANT_COLUMNS, data)
            hasher = await self.hash_keys.active(session)
            data, imported = await asyncio.to_thread(_key_rows, keys, ids, now, hasher)
            if imported:
                await _copy(session, "api_keys", _KEY_COLUMNS, data)
        return len(tenants), imported, change.version


def _parse(data: bytes, now: datetime) -> tuple[dict[str, tuple[int, dict[str, Any]]], list[_KeyLine]]:
    """Every line checked as the create calls check it; ``ImportRejected`` names the problems.

    CPU work on a file of tens of thousands of lines: called in a worker thread."""
    if len(data) > MAX_BYTES:
        raise InvalidArgument("jsonl", f"{len(data)} bytes, more than {MAX_BYTES}")
    check = _Check()
    tenants: dict[str, tuple[int, dict[str, Any]]] = {}
    keys: list[_KeyLine] = []
    try:
        # At "\n" only (a "\r" before it is dropped below): str.splitlines also breaks at
        # U+2028, U+2029 and U+0085, which JSON carries unescaped inside strings.
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise InvalidArgument("jsonl", f"not UTF-8 (byte {exc.start})") from None
    if len(lines) > MAX_LINES:
        raise InvalidArgument("jsonl", f"{len(lines)} lines, more than {MAX_LINES}")
    for number, line in enumerate(lines, start=1):
        text = line.removesuffix("\r")
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            check.add(number, "(line)", f"not JSON: {exc}")
            continue
        except RecursionError:
            check.add(number, "(line)", "not JSON: nested too deeply")
            continue
        if not isinstance(obj, dict):
            check.add(number, "(line)", "must be a JSON object")
            continue
        kind = obj.get("kind")
        # Not looked up unless a string: a list or an object cannot be (TypeError).
        if not isinstance(kind, str) or kind not in _FIELDS:
            check.add(number, "kind", f"must be one of {', '.join(sorted(_FIELDS))}, got {shown(str(kind))}")
            continue
        for unknown in sorted(set(obj) - _FIELDS[kind]):
            check.add(number, shown(unknown), f"unknown field for {kind}")
        if kind == "tenant":
            name = _str(check, number, obj, "name", NAME_CHARS)
            try:
                check_name("name", name)
            except InvalidArgument as exc:
                check.add(number, "name", str(exc).split(": ", 1)[-1])
            if name in tenants:
                check.add(number, "name", f"tenant {shown(name)} already on line {tenants[name][0]}")
            tier = _str(check, number, obj, "tier", TIER_CHARS)
            row: dict[str, Any] = {"name": name, "tier": tier, "labels": _labels(check, number, obj)}
            tenants.setdefault(name, (number, row))
        else:
            scopes = obj.get("scopes", [])
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                check.add(number, "scopes", "must be a list of strings")
                scopes = []
            try:
                validate_scopes(scopes)
            except ScopeSyntaxError as exc:
                check.add(number, f"scopes[{exc.index}]", exc.problem)
            tenant = _str(check, number, obj, "tenant", NAME_CHARS)  # a name or an id
            if not tenant:
                check.add(number, "tenant", "must not be empty")
            name = _str(check, number, obj, "name", NAME_CHARS)
            keys.append(_KeyLine(number, tenant, name, list(scopes), _expiry(check, number, obj, now)))
    if check.total:
        raise ImportRejected(check.problems, check.total)
    return tenants, keys


_TENANT_COLUMNS = ("id", "name", "tier", "labels", "active", "created_at")
_KEY_COLUMNS = (
    "id",
    "tenant_id",
    "name",
    "prefix",
    "secret_hmac",
    "hash_key_version",
    "scopes",
    "expires_at",
    "created_at",
)


async def _copy(session: AsyncSession, table: str, columns: Sequence[str], data: bytes) -> None:
    """``COPY table (columns) FROM STDIN`` of ``data`` (text format) in the session's transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, psycopg.AsyncConnection)
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    async with driver.cursor() as cursor, cursor.copy(statement) as copy:
        await copy.write(data)


def _copy_field(value: object) -> str:
    """One value in COPY's text format (NULL, bytea as hex, JSON for lists and dicts)."""
    if value is None:
        return "\\N"
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, datetime):
        value = value.isoformat()
    text = str(value)
    return text.translate(_COPY_ESCAPES)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_line(values: Sequence[object]) -> str:
    return "\t".join(_copy_field(v) for v in values) + "\n"


def _tenant_copy(
    tenants: dict[str, tuple[int, dict[str, Any]]], ids: dict[str, uuid.UUID], now: datetime
) -> bytes:
    """The new tenants as COPY text. In a worker thread."""
    return "".join(
        _copy_line((ids[name], name, row["tier"], row["labels"], True, now))
        for name, (_, row) in tenants.items()
    ).encode()


def _key_rows(
    keys: list[_KeyLine], ids: dict[str, uuid.UUID], now: datetime, hasher: ApiKeyHasher
) -> tuple[bytes, list[ImportedKey]]:
    """New keys and the rows to insert as COPY text (only the keys' HMAC digests are stored).
    In a worker thread."""
    imported = []
    rows = []
    for key in keys:
        key_id = uuid.uuid4()
        secret = new_api_key(key_id)
        values = {
            "id": key_id,
            "tenant_id": ids[key.tenant],
            "name": key.name,
            "prefix": secret[:VISIBLE_PREFIX_CHARS],
            "secret_hmac": hasher.digest(secret),
            "hash_key_version": hasher.version,
            "scopes": key.scopes,
            "expires_at": key.expires_at,
            "created_at": now,
        }
        rows.append(_copy_line([values[c] for c in _KEY_COLUMNS]))
        imported.append(ImportedKey(key.number, ApiKey(**values), secret))
    return "".join(rows).encode(), imported


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
