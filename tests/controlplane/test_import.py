"""``signalbox admin import FILE``: tenants and API keys from JSON Lines, all or nothing, in
one snapshot; errors name line and field; secrets go to a 0600 file only."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import grpc
import pytest

from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin
from tests.controlplane.test_cli import _signalbox
from tests.fixtures.postgres import RunningControlPlane, sql_rows


def _jsonl(*objects: object) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in objects).encode()


def _digest(control_plane: RunningControlPlane, key: str) -> bytes:
    """The key's digest as the control plane stores and ships it (HMAC under its hash key)."""
    hasher = control_plane.cp.api_key_hasher
    assert hasher is not None
    return hasher.digest(key)


async def _snapshot(admin: Admin) -> snapshot_pb2.Snapshot:
    envelope = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())
    return snapshot_pb2.Snapshot.FromString(envelope.payload)


async def test_import_is_one_snapshot_and_the_secrets_work(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="existing"))
    before = await admin.latest_version()
    data = _jsonl(
        {"kind": "tenant", "name": "imp-a", "tier": "gold", "labels": {"team": "x"}},
        {"kind": "api_key", "tenant": "imp-a", "name": "k1", "scopes": ["model:small"]},
        {"kind": "api_key", "tenant": "existing", "expires_at": "2099-01-01T00:00:00Z"},
        {"kind": "tenant", "name": "imp-b"},
    )
    reply = await admin.ImportConfig(admin_pb2.ImportConfigRequest(jsonl=data))
    assert reply.tenants == 2
    assert [k.line for k in reply.keys] == [2, 3]
    assert reply.snapshot_version == before + 1
    snapshot = await _snapshot(admin)
    assert snapshot.version == before + 1
    assert {"imp-a", "imp-b", "existing"} <= {t.name for t in snapshot.tenants}
    hashes = {bytes(k.secret_hmac): k for k in snapshot.api_keys}
    for imported in reply.keys:
        entry = hashes[_digest(control_plane, imported.secret)]
        assert entry.id == imported.key.id
    first = hashes[_digest(control_plane, reply.keys[0].secret)]
    assert list(first.scopes) == ["model:small"]
    tenant_a = next(t for t in snapshot.tenants if t.name == "imp-a")
    assert tenant_a.tier == "gold"
    assert dict(tenant_a.labels) == {"team": "x"}
    assert first.tenant_id == tenant_a.id
    assert hashes[_digest(control_plane, reply.keys[1].secret)].HasField("expires_at")


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([{"kind": "tenant", "name": "ok"}, "not json"], "line 2: (line): not JSON"),
        # Nested past the parser's recursion limit: a RecursionError, and an INTERNAL, before.
        ([{"kind": "tenant", "name": "ok"}, "[" * 100_000], "line 2: (line): not JSON: nested too deeply"),
        ([{"kind": "tenant", "name": "bad name"}], "line 1: name: must start with a letter"),
        (
            [{"kind": "tenant", "name": "t"}, {"kind": "tenant", "name": "t"}],
            "line 2: name: tenant 't' already on line 1",
        ),
        ([{"kind": "widget"}], "line 1: kind: must be one of api_key, tenant"),
        # A kind that is no string (and cannot be looked up in a set) was an INTERNAL.
        ([{"kind": ["tenant"]}], "line 1: kind: must be one of api_key, tenant, got \"['tenant']\""),
        ([{"kind": {"a": 1}}], "line 1: kind: must be one of api_key, tenant, got \"{'a': 1}\""),
        ([{"kind": "tenant", "name": "t", "colour": "red"}], "line 1: 'colour': unknown field for tenant"),
        ([{"kind": "api_key", "tenant": "ghost"}], "line 1: tenant: tenant 'ghost' not found"),
        ([{"kind": "api_key", "tenant": "x", "scopes": ["nope"]}], "line 1: scopes[0]:"),
        (
            [{"kind": "api_key", "tenant": "x", "expires_at": "2001-01-01T00:00:00Z"}],
            "line 1: expires_at: must be in the future",
        ),
        ([{"kind": "tenant", "name": "existing"}], "line 1: name: tenant 'existing' already exists"),
        # Values the database cannot hold, and sizes CreateTenant refuses: each was an
        # INTERNAL from the driver (or went in unbounded) before import checked them.
        ([{"kind": "tenant", "name": "t", "tier": "go\x00ld"}], "line 1: tier: must not contain NUL"),
        ([{"kind": "tenant", "name": "t", "tier": "\ud800"}], "line 1: tier: must be valid Unicode"),
        (
            [{"kind": "tenant", "name": "t", "labels": {"a": "\x00"}}],
            "line 1: labels.a: must not contain NUL",
        ),
        ([{"kind": "tenant", "name": "t", "labels": {"\udfff": "x"}}], "line 1: labels key: must be valid"),
        (
            [{"kind": "tenant", "name": "t", "labels": {f"k{i}": "v" for i in range(65)}}],
            "line 1: labels: at most 64 entries",
        ),
        (
            [{"kind": "tenant", "name": "t", "labels": {"k": "v" * 2049}}],
            "line 1: labels.k: at most 2048 characters",
        ),
        ([{"kind": "api_key", "tenant": "x", "name": "ci\x00"}], "line 1: name: must not contain NUL"),
        ([{"kind": "api_key", "tenant": "x", "name": "\udfff"}], "line 1: name: must be valid Unicode"),
        (
            [{"kind": "api_key", "tenant": "x", "expires_at": "9999-12-31T23:00:00-05:00"}],
            "line 1: expires_at: must be between 0001-01-01 and 9999-12-31 (UTC)",
        ),
    ],
)
async def test_a_bad_line_refuses_the_whole_file_naming_line_and_field(
    admin: Admin, lines: list[object], expected: str
) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="existing"))
    before = await admin.latest_version()
    tenants_before = len((await admin.ListTenants(admin_pb2.ListTenantsRequest())).tenants)
    data = b"".join((json.dumps(o) if not isinstance(o, str) else o).encode() + b"\n" for o in lines)
    # A valid tenant and key first: all or nothing means they are not kept either.
    data = _jsonl({"kind": "tenant", "name": "first"}, {"kind": "api_key", "tenant": "first"}) + data
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.ImportConfig(admin_pb2.ImportConfigRequest(jsonl=data))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    shifted = expected.replace("line 2", "line 4").replace("line 1", "line 3")
    assert shifted in (caught.value.details() or "")
    assert "nothing imported" in (caught.value.details() or "")
    assert await admin.latest_version() == before
    assert len((await admin.ListTenants(admin_pb2.ListTenantsRequest())).tenants) == tenants_before
    assert not (await admin.ListApiKeys(admin_pb2.ListApiKeysRequest())).keys


async def test_errors_are_bounded(admin: Admin) -> None:
    data = _jsonl(*({"kind": "tenant", "name": f"bad {i}"} for i in range(500)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.ImportConfig(admin_pb2.ImportConfigRequest(jsonl=data))
    details = caught.value.details() or ""
    assert details.startswith("jsonl: 500 problem(s), nothing imported (the first 10): line 1: name:")
    assert "line 10: name: " in details
    assert "line 11: " not in details
    assert "clipped" not in details


async def test_cli_writes_secrets_to_a_private_file_only(
    control_plane: RunningControlPlane, admin: Admin, tmp_path: Path
) -> None:
    source = tmp_path / "config.jsonl"
    source.write_bytes(
        _jsonl(
            {"kind": "tenant", "name": "cli-t"},
            *({"kind": "api_key", "tenant": "cli-t", "name": f"k{i}"} for i in range(3)),
        )
    )
    out = tmp_path / "secrets.jsonl"
    base = ("admin", "--target", control_plane.address, "--token", control_plane.token)
    code, stdout, stderr = await _signalbox(*base, "import", str(source), "--secrets-out", str(out))
    assert code == 0, stderr
    assert "imported 1 tenants and 3 api keys" in stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [2, 3, 4]
    for r in records:
        assert r["secret"] not in stdout
        assert r["secret"] not in stderr
    snapshot = await _snapshot(admin)
    digests = {bytes(k.secret_hmac) for k in snapshot.api_keys}
    assert all(_digest(control_plane, r["secret"]) in digests for r in records)
    # Never over an existing file, and nothing is imported then.
    before = await admin.latest_version()
    code, _, stderr = await _signalbox(*base, "import", str(source), "--secrets-out", str(out))
    assert code != 0
    assert "refusing to overwrite" in stderr
    assert await admin.latest_version() == before
    # A refused import leaves no secrets file behind.
    code, _, stderr = await _signalbox(
        *base, "import", str(source), "--secrets-out", str(tmp_path / "again.jsonl")
    )
    assert code != 0
    assert "already exists" in stderr
    assert not (tmp_path / "again.jsonl").exists()
    # --json output carries no secret either.
    source.write_bytes(_jsonl({"kind": "api_key", "tenant": "cli-t"}))
    code, stdout, stderr = await _signalbox(
        *base, "--json", "import", str(source), "--secrets-out", str(tmp_path / "s3")
    )
    assert code == 0, stderr
    secret = json.loads((tmp_path / "s3").read_text())["secret"]
    assert secret not in stdout


async def test_import_is_admin_only_and_audited(control_plane: RunningControlPlane, admin: Admin) -> None:
    assert control_plane.cp.admin is not None
    _, token = await control_plane.cp.admin.create_token("auditor", role="auditor")
    data = _jsonl({"kind": "tenant", "name": "v"})
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        viewer = Admin(admin_pb2_grpc.AdminServiceStub(channel), (("authorization", f"Bearer {token}"),))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await viewer.ImportConfig(admin_pb2.ImportConfigRequest(jsonl=data))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await admin.ImportConfig(admin_pb2.ImportConfigRequest(jsonl=data))
    rows = sql_rows(
        control_plane.database_url,
        "SELECT actor, method, result FROM audit_log WHERE method = 'ImportConfig'",
    )
    assert [tuple(r) for r in rows] == [
        ("admin:auditor", "ImportConfig", "PERMISSION_DENIED"),
        ("admin:tests", "ImportConfig", "OK"),
    ]


async def test_imported_values_arrive_byte_for_byte_whatever_their_characters(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    """Rows go in with COPY's text format: tabs, newlines, backslashes, quotes and non-ASCII
    in free-form values must come out exactly as given (not as columns, rows or escapes)."""
    odd = 'tab\there\nnew line\r\\N \\x00 "quoted" \\\\ caf\u00e9 \u2603'
    data = _jsonl(
        {"kind": "tenant", "name": "odd", "tier": "t\\1", "labels": {"note": odd, "k\ty": "\\"}},
        {"kind": "api_key", "tenant": "odd", "name": "k-odd", "expires_at": "2099-01-01T00:00:00Z"},
    )
    reply = await admin.ImportConfig(admin_pb2.ImportConfigRequest(jsonl=data))
    snapshot = await _snapshot(admin)
    (tenant,) = [t for t in snapshot.tenants if t.name == "odd"]
    assert dict(tenant.labels) == {"note": odd, "k\ty": "\\"}
    assert tenant.tier == "t\\1"
    assert tenant.active
    (key,) = [k for k in snapshot.api_keys if k.tenant_id == tenant.id]
    assert key.name == "k-odd"
    assert key.secret_hmac == _digest(control_plane, reply.keys[0].secret)
    assert key.expires_at.ToSeconds() == 4070908800


async def test_keys_may_name_a_tenant_by_any_name_a_tenant_may_have(admin: Admin) -> None:
    """Tenant names are up to 200 characters; a key line naming one was refused past 64."""
    name = "t" * 200
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=name))
    reply = await admin.ImportConfig(
        admin_pb2.ImportConfigRequest(
            jsonl=_jsonl(
                {"kind": "tenant", "name": "u" * 200}, *({"kind": "api_key", "tenant": t * 200} for t in "tu")
            )
        )
    )
    assert len(reply.keys) == 2
    tenants = {t.id: t.name for t in (await admin.ListTenants(admin_pb2.ListTenantsRequest())).tenants}
    assert sorted(tenants[k.key.tenant_id] for k in reply.keys) == [name, "u" * 200]


async def test_a_line_is_split_at_newlines_only_not_at_unicode_line_breaks(admin: Admin) -> None:
    """JSON may carry U+2028, U+2029 and U+0085 unescaped inside a string (json.dumps does with
    ensure_ascii=False). Splitting the file with str.splitlines cut such a line in two: a
    valid file was refused ("not JSON") and later lines were numbered wrong."""
    odd = "a\u2028b\u2029c\x85d"
    lines = [
        {"kind": "tenant", "name": "breaks", "labels": {"note": odd}},
        {"kind": "api_key", "tenant": "breaks", "name": f"k{odd}"},
    ]
    data = "\r\n".join(json.dumps(o, ensure_ascii=False) for o in lines).encode()
    reply = await admin.ImportConfig(admin_pb2.ImportConfigRequest(jsonl=data))
    assert (reply.tenants, [k.line for k in reply.keys]) == (1, [2])
    assert reply.keys[0].key.name == f"k{odd}"
    tenant = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="breaks"))
    assert dict(tenant.labels) == {"note": odd}
