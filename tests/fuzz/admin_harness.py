"""What the Admin API fuzz modules share: the strategies for hostile values, the seeded
control plane, and the contract every answer is held to (a defined status, a bounded
message that names what it is about, no secret, nothing half-written, still serving)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st

from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import sql_rows

DEFINED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
MESSAGE_BYTES = 1024
"""``controlplane.api.status.MESSAGE_BYTES``: no message leaves longer."""
_NAMED = re.compile(r"^[A-Za-z_$][^\n]*?: |^[a-z][a-z ]* ")
"""A refusal starts with the field or path it is about ("issuer.audiences[0]: ...",
"provider.settings key: ...", "$.policies[0]...: ...") or the kind of thing it names
("tenant 'x' not found")."""
# Configuration the control plane holds: a refused write leaves every row of these as it was.
CONFIG_TABLES = (
    "tenants",
    "api_keys",
    "providers",
    "models",
    "deployments",
    "policies",
    "governance_profiles",
    "admin_tokens",
    "admin_mtls_identities",
    "signing_keys",
    "node_groups",
    "snapshots",
    "enroll_tokens",
    "node_certificates",
    "tenant_identities",
    "api_key_hash_key",
    "evidence_pruned_ranges",
)

# ---- strategies ----

chars = st.characters(exclude_categories=("Cs",))  # surrogates cannot be sent as protobuf strings
odd_text = st.one_of(
    st.text(chars, max_size=30),
    st.sampled_from(
        ["", "acme", "sim", "small", "a\x00b", "\x00", "é" * 201, "x" * 200, "x" * 201, "\u202e\x1b[2J"]
    ),
    st.builds(
        lambda n, c: c * n,
        st.sampled_from([63, 64, 65, 100, 101, 199, 200, 201, 256, 257, 5000]),
        st.sampled_from("aé😀\x00 "),
    ),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x1F), max_size=8),
)
names = st.one_of(st.from_regex(r"[a-z][a-z0-9._-]{0,20}", fullmatch=True), odd_text)
uint32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1]))
uint64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64 - 1]))
int64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([-1, 0, 2**63 - 1, -(2**63)]))
int32 = st.integers(-(2**31), 2**31 - 1)
small_enum = st.one_of(st.integers(0, 6), int32)
str_maps = st.one_of(
    st.dictionaries(odd_text, odd_text, max_size=3),
    st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.sampled_from([64, 65, 200])),
)
timestamps = st.builds(
    Timestamp,
    seconds=st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.sampled_from([253402300799, 253402300800, -62135596800, -62135596801, 4102444800, 0]),
    ),
    nanos=st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(0, 999_999_999)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(chars, max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(chars, max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

# ---- the harness ----


def check_refusal(code: grpc.StatusCode, details: str, *, secrets: tuple[str, ...] = ()) -> None:
    """The contract of a refusal: a defined status, a bounded message naming a field or rule."""
    assert code in DEFINED, f"{code.name}: {details[:300]!r}"
    assert len(details.encode()) <= MESSAGE_BYTES, f"{len(details.encode())}-byte message"
    assert _NAMED.match(details), f"{code.name} names no field or rule: {details[:300]!r}"
    for secret in secrets:
        assert secret not in details, "a secret in a message"


async def call(call: Awaitable[Any], *, secrets: tuple[str, ...] = ()) -> tuple[grpc.StatusCode, Any]:
    """(OK, response) or (status, message), holding a refusal to the contract."""
    try:
        return grpc.StatusCode.OK, await call
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details() or ""
    check_refusal(code, details, secrets=secrets)
    return code, details


async def still_serves(admin: Admin) -> None:
    tenant = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))
    assert tenant.name == "acme"


def config_state(database_url: str) -> dict[str, str]:
    """A digest of every row of the configuration tables, read on a connection of its own."""
    sql = " UNION ALL ".join(
        f"SELECT '{table}', md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
        for table in CONFIG_TABLES
    )
    return {str(row[0]): str(row[1]) for row in sql_rows(database_url, sql)}


async def check_write(
    admin: Admin,
    database_url: str,
    request: Callable[[], Awaitable[Any]],
    *,
    secrets: tuple[str, ...] = (),
) -> tuple[grpc.StatusCode, Any]:
    """A write: refused, it leaves every configuration row as it was; the server serves after."""
    before = config_state(database_url)
    code, response = await call(request(), secrets=secrets)
    if code != grpc.StatusCode.OK:
        assert config_state(database_url) == before, f"a refused write ({response[:200]!r}) changed rows"
    await still_serves(admin)
    return code, response


async def check_read(
    admin: Admin, database_url: str, request: Callable[[], Awaitable[Any]]
) -> tuple[grpc.StatusCode, Any]:
    """A read: answered or refused, it writes nothing; the server serves after."""
    before = config_state(database_url)
    code, response = await call(request())
    assert config_state(database_url) == before, "a read changed rows"
    await still_serves(admin)
    return code, response


def mostly(
    valid: dict[str, st.SearchStrategy[Any]], hostile: dict[str, st.SearchStrategy[Any]], most: int = 2
) -> st.SearchStrategy[dict[str, Any]]:
    """Requests' fields: each valid but for up to ``most`` drawn from ``hostile``, so the
    checks behind the first ones are reached too (a request hostile everywhere is refused
    at its first field)."""

    @st.composite
    def fields(draw: st.DrawFn) -> dict[str, Any]:
        chosen = draw(st.sets(st.sampled_from(sorted(hostile)), max_size=most))
        return {name: draw(hostile[name] if name in chosen else strategy) for name, strategy in valid.items()}

    return fields()
