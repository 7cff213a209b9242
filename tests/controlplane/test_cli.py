"""``signalbox controlplane ...`` and ``signalbox admin ...`` as real subprocesses."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from dataplane.snapshot.envelope import verify
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import signalbox_exit

TIMEOUT = 60.0
CHAT, TOOLS = common_pb2.CAPABILITY_CHAT, common_pb2.CAPABILITY_TOOLS


async def _signalbox(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_bootstrap_admin_prints_a_working_token_last(
    control_plane: RunningControlPlane, tmp_path: Path
) -> None:
    code, out, err = await _signalbox(
        "controlplane",
        "bootstrap-admin",
        "--database-url",
        control_plane.database_url,
        "--data-dir",
        str(tmp_path),
        "--name",
        "ops",
    )
    assert code == 0, err
    token = out.strip().splitlines()[-1]
    assert token.startswith("sbxadm_")
    code, out, err = await _signalbox(
        "admin", "--target", control_plane.address, "--token", token, "--json", "tenant", "list"
    )
    assert code == 0, err
    assert json.loads(out) == {}


async def test_admin_cli_round_trip(control_plane: RunningControlPlane, admin: Admin, tmp_path: Path) -> None:
    env = {"SIGNALBOX_ADMIN_TARGET": control_plane.address, "SIGNALBOX_ADMIN_TOKEN": control_plane.token}

    async def run(*args: str) -> str:
        code, out, err = await _signalbox("admin", *args, env=env)
        assert code == 0, err
        return out

    await run("tenant", "create", "acme", "--tier", "gold", "--label", "region=eu")
    await run(
        "provider",
        "create",
        "sim",
        "--type",
        "simulated",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--credential-env",
        "SIGNALBOX_CRED_SIM",
    )
    await run("model", "create", "small", "--deployment", "sim:small-v1", "--capability", "chat")
    secret_out = await run("key", "create", "--tenant", "acme", "--name", "ci")
    assert "sbx_" in secret_out.strip().splitlines()[-1]
    policy = tmp_path / "policy.yaml"
    policy.write_text("default_model: small\n")
    await run("policy", "apply", "--tenant", "acme", "-f", str(policy))

    table = await run("tenant", "list")
    assert table.splitlines()[0].split() == ["ID", "NAME", "TIER", "ACTIVE", "LABELS", "EVIDENCE"]
    assert "acme" in table
    history = json.loads(await run("--json", "policy", "history", "--tenant", "acme"))
    assert [v["document_json"] for v in history["versions"]] == ['{"default_model":"small"}']
    info = json.loads(await run("--json", "snapshot", "show"))
    assert int(info["version"]) == await admin.latest_version()
    assert "NODE" in await run("node", "list")
    explained = await run("route", "explain", "--tenant", "acme")
    assert "chosen        small@sim (deployment " in explained

    code, _, err = await _signalbox("admin", "tenant", "create", "acme", env=env)
    assert code == 6
    assert "ALREADY_EXISTS" in err
    code, _, err = await _signalbox("admin", "--token", "sbxadm_nope", "tenant", "list", env=env)
    assert code == 3
    assert "UNAUTHENTICATED" in err


async def test_key_scopes_are_checked_before_the_call_and_shown(
    control_plane: RunningControlPlane, admin: Admin
) -> None:
    env = {"SIGNALBOX_ADMIN_TARGET": control_plane.address, "SIGNALBOX_ADMIN_TOKEN": control_plane.token}
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))

    code, _, err = await _signalbox(
        "admin", "key", "create", "--tenant", "acme", "--scope", "op:chat", "--scope", "foo:x", env=env
    )
    assert code != 0
    assert "--scope: scopes[1]: unknown scope kind 'foo' (known: model, op, task)" in err
    assert not (await admin.ListApiKeys(admin_pb2.ListApiKeysRequest())).keys

    args = (
        "key",
        "create",
        "--tenant",
        "acme",
        "--name",
        "ci",
        "--scope",
        "op:chat",
        "--scope",
        "model:small",
    )
    code, out, err = await _signalbox("admin", *args, env=env)
    assert code == 0, err
    header, row = out.strip().splitlines()
    assert header.split()[:4] == ["ID", "TENANT", "PREFIX", "SCOPES"]
    assert row.split()[3] == "model:small,op:chat"
    assert row.split()[-1].startswith("sbx_")
    code, out, err = await _signalbox("admin", "key", "create", "--tenant", "acme", "--name", "open", env=env)
    assert code == 0, err

    code, out, err = await _signalbox("admin", "key", "list", env=env)
    assert code == 0, err
    header, *rows = out.strip().splitlines()
    assert header.split() == ["ID", "TENANT", "NAME", "PREFIX", "SCOPES", "EXPIRES"]
    scopes = {row.split()[2]: row.split()[4] for row in rows}
    assert scopes == {"ci": "model:small,op:chat", "open": "unrestricted"}


async def test_export_snapshot_writes_the_newest_signed_envelope(
    control_plane: RunningControlPlane, admin: Admin, tmp_path: Path
) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    out = tmp_path / "snapshot.bin"
    code, _, err = await _signalbox(
        "controlplane",
        "export-snapshot",
        "--database-url",
        control_plane.database_url,
        "--data-dir",
        str(tmp_path),
        "--out",
        str(out),
    )
    assert code == 0, err
    envelope = snapshot_pb2.SignedEnvelope.FromString(out.read_bytes())
    assert verify(envelope, {control_plane.key_id: control_plane.public_key}) == control_plane.key_id
    exported = snapshot_pb2.Snapshot.FromString(envelope.payload).version
    assert exported == await admin.latest_version()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # a snapshot file is private
    # The pin is recorded, so retention keeps that version.
    assert (await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(version=exported))).HasField("exported_at")


async def test_export_snapshot_to_a_path_it_cannot_write_is_one_line_and_leaves_nothing(
    control_plane: RunningControlPlane, admin: Admin, tmp_path: Path
) -> None:
    # --out naming a directory, or a file in a missing one, was a traceback; the directory
    # case also left the whole snapshot in <dir>.tmp beside it.
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    common = ("controlplane", "export-snapshot", "--database-url", control_plane.database_url)
    taken = tmp_path / "pins"
    taken.mkdir()
    for out, reason in (
        (taken, "Is a directory"),
        (tmp_path / "missing" / "pin.bin", "No such file or directory"),
    ):
        code, _, err = await _signalbox(*common, "--data-dir", str(tmp_path), "--out", str(out))
        assert code == 1, err
        assert err.strip() == f"signalbox controlplane export-snapshot: --out {out}: {reason}"
    assert await asyncio.to_thread(os.listdir, tmp_path) == ["pins"]
    assert await asyncio.to_thread(os.listdir, taken) == []


async def test_serve_on_embedded_postgres_then_sigterm_stops_cleanly(private_tmp: Path) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="serve-", dir=private_tmp))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        "controlplane",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "SIGNALBOX_DATABASE_URL"},
    )
    assert process.stderr is not None
    try:
        address = ""
        seen: list[str] = []
        while not address:
            line = (await asyncio.wait_for(process.stderr.readline(), TIMEOUT)).decode()
            assert line, "serve exited before it was ready:\n" + "".join(seen)
            seen.append(line)
            if line.startswith("control plane serving on "):
                address = line.removeprefix("control plane serving on ").strip()
        assert (data_dir / "trust-key.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
        assert (data_dir / "postgres" / "PG_VERSION").exists()
        process.terminate()
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_policy_diff_compares_stored_versions(control_plane: RunningControlPlane, admin: Admin) -> None:
    env = {"SIGNALBOX_ADMIN_TARGET": control_plane.address, "SIGNALBOX_ADMIN_TOKEN": control_plane.token}
    await admin.seed()
    for document in (
        "default_model: small",
        "default_model: large\nallowed_models: [large, small]",
        '{"allowed_models": ["large", "small"], "default_model": "small"}',
    ):
        await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document=document))

    code, out, err = await _signalbox("admin", "policy", "diff", "--tenant", "acme", env=env)
    assert code == 0, err
    assert out == (
        "--- policy of acme v2\n"
        "+++ policy of acme v3\n"
        "@@ -3,5 +3,5 @@\n"
        '     "large",\n'
        '     "small"\n'
        "   ],\n"
        '-  "default_model": "large"\n'
        '+  "default_model": "small"\n'
        " }\n"
    )
    code, out, err = await _signalbox(
        "admin", "policy", "diff", "--tenant", "acme", "--from", "1", "--to", "2", env=env
    )
    assert code == 0, err
    assert out.splitlines()[:2] == ["--- policy of acme v1", "+++ policy of acme v2"]
    assert '+  "allowed_models": [\n' in out
    assert '-  "default_model": "small"\n' in out
    # Equal documents: no diff at all, like diff(1).
    code, out, err = await _signalbox(
        "admin", "policy", "diff", "--tenant", "acme", "--from", "1", "--to", "1", env=env
    )
    assert (code, out) == (0, ""), err
    code, out, err = await _signalbox("admin", "--json", "policy", "diff", "--tenant", "acme", env=env)
    assert code == 0, err
    assert [int(v["version"]) for v in json.loads(out)["versions"]] == [2, 3]

    code, _, err = await _signalbox("admin", "policy", "diff", "--tenant", "acme", "--from", "9", env=env)
    assert code == 5
    assert "NOT_FOUND" in err
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(document="default_model: small"))
    code, _, err = await _signalbox("admin", "policy", "diff", env=env)
    assert code == 1
    assert "no version before v1" in err


async def test_route_explain_shows_each_drop_and_calls_no_provider(
    control_plane: RunningControlPlane, admin: Admin, simulator: Simulator
) -> None:
    env = {"SIGNALBOX_ADMIN_TARGET": control_plane.address, "SIGNALBOX_ADMIN_TOKEN": control_plane.token}
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(
            provider=admin_pb2.Provider(name="sim", type="simulated", base_url=f"{simulator.base_url}/v1")
        )
    )
    for alias, caps in (("plain", [CHAT]), ("tooled", [CHAT, TOOLS])):
        model = admin_pb2.Model(
            alias=alias,
            capabilities=caps,
            deployments=[admin_pb2.Deployment(provider="sim", upstream_model=alias)],
        )
        await admin.CreateModel(admin_pb2.CreateModelRequest(model=model))
    policy = "allowed_models: [plain, tooled]\nrules:\n  - name: agents\n    models: [plain, tooled]\n"
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document=policy))

    code, out, err = await _signalbox(
        "admin",
        "route",
        "explain",
        "--tenant",
        "acme",
        "--capability",
        "tools",
        "--message",
        "x" * 40,
        env=env,
    )
    assert code == 0, err
    assert out.splitlines()[1:4] == [
        "rule          agents",
        "strategy      priority",
        "reason        rule 'agents': priority order",
    ]
    assert "input tokens  10 (estimated)\n" in out
    assert "considered    plain, tooled\n" in out
    assert "dropped       plain: lacks capability 'tools'\n" in out
    assert "chosen        tooled@sim (deployment " in out
    assert "fallback      (none)\n" in out
    assert "split arm     (none)\n" in out
    assert "shadow        (none)\n" in out
    assert simulator.stats_json()["total"] == 0

    code, out, err = await _signalbox(
        "admin", "--json", "route", "explain", "--tenant", "acme", "--capability", "vision", env=env
    )
    assert code == 7, out
    assert "FAILED_PRECONDITION: no allowed model has capability 'vision'" in err
    assert simulator.stats_json()["total"] == 0


async def test_admin_cli_refuses_what_the_control_plane_cannot_store_before_sending() -> None:
    """The CLI runs the server's own check (controlplane.limits): no server is needed to
    learn that a tier is too long, and nothing is sent."""
    env = {"SIGNALBOX_ADMIN_TARGET": "127.0.0.1:9", "SIGNALBOX_ADMIN_TOKEN": "sbxadm_unused"}
    code, _, err = await _signalbox("admin", "tenant", "create", "acme", "--tier", "g" * 101, env=env)
    assert (code, err.strip()) == (2, "signalbox admin: INVALID_ARGUMENT: tier: at most 100 characters")
    code, _, err = await _signalbox(
        "admin", "provider", "create", "p", "--type", "simulated", "--timeout-ms", str(2**32 - 1), env=env
    )
    assert (code, err.strip()) == (
        2,
        "signalbox admin: INVALID_ARGUMENT: provider.timeout_ms: at most 2147483647",
    )


async def test_snapshot_history_through_the_cli(control_plane: RunningControlPlane, admin: Admin) -> None:
    env = {"SIGNALBOX_ADMIN_TARGET": control_plane.address, "SIGNALBOX_ADMIN_TOKEN": control_plane.token}

    async def run(*args: str) -> str:
        code, out, err = await _signalbox("admin", *args, env=env)
        assert code == 0, err
        return out

    await admin.seed()
    created = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="ci"))
    target = await admin.latest_version()
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", tier="silver"))
    changed = await admin.latest_version()

    listed = await run("snapshot", "list", "--limit", "2")
    lines = listed.splitlines()
    assert lines[0].split() == ["VERSION", "SHA256", "CREATED_AT", "CREATED_BY", "REASON", "EXPORTED"]
    assert lines[1].startswith(f"{changed} ")
    assert "admin:tests" in lines[1]
    assert "update tenant acme" in lines[1]
    assert f"(more: --before {target})" in listed

    shown = await run("snapshot", "show", str(target))
    assert "tenants (1):" in shown
    assert "acme" in shown
    assert f"{created.key.prefix}..." in shown
    assert "env:SIGNALBOX_CRED_SIM" in shown
    assert control_plane.cp.api_key_hasher is not None
    digest = control_plane.cp.api_key_hasher.digest(created.secret)
    for text in (shown, await run("--json", "snapshot", "show", str(target))):
        assert created.secret not in text
        assert digest.hex() not in text
        assert base64.b64encode(digest).decode() not in text
    as_json = json.loads(await run("--json", "snapshot", "show", str(target)))
    assert [t["name"] for t in as_json["content"]["tenants"]] == ["acme"]

    diff = await run("snapshot", "diff", str(target), str(changed))
    assert f"v{target} -> v{changed}: 1 change(s)" in diff
    assert "~ tenant acme" in diff
    assert 'tier: "gold" -> "silver"' in diff

    rolled = await run("snapshot", "rollback", str(target))
    assert f"rolled back to v{target}: published v{changed + 1}" in rolled
    assert "gold" in await run("tenant", "get", "acme")
    newest = (await run("snapshot", "list", "--limit", "1")).splitlines()[1]
    assert f"rollback to v{target}" in newest

    code, _, err = await _signalbox("admin", "snapshot", "rollback", "0", env=env)
    assert code == 2
    assert "positive integer" in err
    code, _, err = await _signalbox("admin", "snapshot", "diff", str(target), "9999", env=env)
    assert code != 0
    assert "NOT_FOUND" in err


async def test_signing_key_commands(control_plane: RunningControlPlane) -> None:
    env = {"SIGNALBOX_ADMIN_TARGET": control_plane.address, "SIGNALBOX_ADMIN_TOKEN": control_plane.token}

    async def run(*args: str) -> tuple[int, str, str]:
        return await _signalbox("admin", *args, env=env)

    code, out, err = await run("signing-key", "rotate")
    assert code == 0, err
    new_id = out.split()[4]
    assert f"still signing until revoked: {control_plane.key_id}" in out
    code, out, err = await run("signing-key", "list")
    assert code == 0, err
    rows = [line.split()[:2] for line in out.splitlines()]
    assert rows[0] == ["KEY_ID", "STATE"]
    assert sorted(rows[1:]) == sorted([[control_plane.key_id, "retiring"], [new_id, "active"]])
    code, out, err = await run("signing-key", "revoke", new_id)
    assert code != 0
    assert "FAILED_PRECONDITION" in err
    assert "rotate first" in err
    code, out, err = await run("signing-key", "revoke", control_plane.key_id)
    assert code == 0, err
    assert f"revoked signing key {control_plane.key_id}" in out
    code, out, err = await run("--json", "signing-key", "list")
    assert code == 0, err
    states = {k["key_id"]: k["state"] for k in json.loads(out)["keys"]}
    assert states == {control_plane.key_id: "revoked", new_id: "active"}


async def test_admin_group_commands_and_per_group_snapshot_commands(
    control_plane: RunningControlPlane, admin: Admin, tmp_path: Path
) -> None:
    env = {"SIGNALBOX_ADMIN_TARGET": control_plane.address, "SIGNALBOX_ADMIN_TOKEN": control_plane.token}

    async def run(*args: str) -> str:
        code, out, err = await _signalbox("admin", *args, env=env)
        assert code == 0, err
        return out

    await admin.seed("acme")
    created = await run(
        "group",
        "create",
        "vault",
        "--mode",
        "on-prem",
        "--site",
        "site-a",
        "--tenant",
        "acme",
        "--model",
        "small",
    )
    assert created.splitlines()[0].split() == [
        "NAME", "MODE", "SITE", "DEPLOYMENT", "TENANTS", "PROVIDERS", "MODELS", "VERSION", "NODES"
    ]  # fmt: skip
    assert created.splitlines()[1].split() == [
        "vault",
        "on_prem",
        "site-a",
        "-",
        "acme",
        "all",
        "small",
        "v1",
        "0",
    ]
    updated = await run("group", "update", "vault", "--all-models", "--deployment", "eu")
    assert updated.splitlines()[1].split()[:8] == [
        "vault",
        "on_prem",
        "site-a",
        "eu",
        "acme",
        "all",
        "all",
        "v2",
    ]
    assert [line.split()[0] for line in (await run("group", "list")).splitlines()[1:]] == ["default", "vault"]
    shown = json.loads(await run("--json", "group", "show", "vault"))
    assert shown["tenants"] == {"names": ["acme"]}

    history = (await run("snapshot", "list", "--group", "vault")).splitlines()
    assert [line.split()[0] for line in history[1:]] == ["2", "1"]
    diff = await run("snapshot", "diff", "1", "2", "--group", "vault")
    assert "+ model large" in diff  # the model list became "all": large arrived
    assert 'deployment: "" -> "eu"' in diff  # the group's scope is part of what changed
    as_json = json.loads(await run("--json", "snapshot", "show", "--group", "vault"))
    assert as_json["node_group"] == "vault"
    rolled = await run("snapshot", "rollback", "1", "--group", "vault")
    assert rolled == "rolled back group vault to v1: published v3\n"
    assert "GROUP" in (await run("node", "list", "--group", "vault")).splitlines()[0].split()

    code, _, err = await _signalbox("admin", "group", "create", "Bad", env=env)
    assert code != 0
    assert "group.name: must be 1..63 characters of a-z, 0-9 and '-' (got 'Bad')" in err
    code, _, err = await _signalbox(
        "admin", "group", "create", "x", "--tenant", "a", "--all-tenants", env=env
    )
    assert code != 0
    assert "--tenant: not with --all-tenants" in err
    await run("group", "delete", "vault")
    assert [line.split()[0] for line in (await run("group", "list")).splitlines()[1:]] == ["default"]


async def test_export_snapshot_of_a_group(
    control_plane: RunningControlPlane, admin: Admin, tmp_path: Path
) -> None:
    await admin.seed("acme")
    await admin.CreateNodeGroup(
        admin_pb2.CreateNodeGroupRequest(group=admin_pb2.NodeGroup(name="vault", deployment="site"))
    )
    out = tmp_path / "vault.bin"
    common = ("--database-url", control_plane.database_url, "--data-dir", str(tmp_path))
    code, _, err = await _signalbox(
        "controlplane", "export-snapshot", *common, "--group", "vault", "--out", str(out)
    )
    assert code == 0, err
    assert "wrote snapshot vault v1" in err
    envelope = snapshot_pb2.SignedEnvelope.FromString(out.read_bytes())
    assert verify(envelope, {control_plane.key_id: control_plane.public_key}) == control_plane.key_id
    pinned = snapshot_pb2.Snapshot.FromString(envelope.payload)
    assert (pinned.scope.node_group, pinned.scope.deployment, pinned.version) == ("vault", "site", 1)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # Only vault's v1 is marked as a pin, not default's version of the same number.
    assert (await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(group="vault", version=1))).HasField(
        "exported_at"
    )
    assert not (await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(version=1))).HasField("exported_at")

    code, _, err = await _signalbox(
        "controlplane", "export-snapshot", *common, "--group", "ghost", "--out", str(tmp_path / "x")
    )
    assert code == 1
    assert "node group 'ghost' has no snapshot" in err
    assert not (tmp_path / "x").exists()


async def test_serve_refuses_the_removed_scope_node_group_flag(tmp_path: Path) -> None:
    code, _, err = await _signalbox(
        "controlplane",
        "serve",
        "--data-dir",
        str(tmp_path),
        "--scope-node-group",
        "gpu",
        "--listen",
        "127.0.0.1:0",
    )
    assert code == 2
    assert "--scope-node-group: removed; one control plane serves every node group" in err


@pytest.mark.parametrize("flag", ["--connection-max-age", "--node-connection-max-age"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
async def test_serve_refuses_a_connection_age_that_is_not_a_positive_number(
    tmp_path: Path, flag: str, value: str
) -> None:
    code, _, err = await _signalbox(
        "controlplane", "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0", f"{flag}={value}"
    )
    assert code == 2
    assert f"{flag}: {float(value)} is not a positive number of seconds" in err


@pytest.mark.parametrize("flag", ["--max-connections-per-peer", "--node-max-connections-per-peer"])
async def test_serve_refuses_a_negative_share_per_client_address(tmp_path: Path, flag: str) -> None:
    code, _, err = await _signalbox(
        "controlplane", "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0", f"{flag}=-1"
    )
    assert code == 2
    assert f"{flag}: -1 is not a count (0 or more)" in err


async def test_an_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    # SQLAlchemy's OperationalError was not among the errors the commands reported: each
    # was a traceback of some 140 lines.
    url = "postgresql+psycopg://signalbox:hunter2-pw@127.0.0.1:1/signalbox"
    for command, extra in (
        ("serve", ("--listen", "127.0.0.1:0", "--node-listen", "127.0.0.1:0")),
        ("bootstrap-admin", ()),
        ("export-snapshot", ("--out", str(tmp_path / "pin.bin"))),
        ("export-api-key-hash-key", ("--out", str(tmp_path / "hash-key"))),
    ):
        code, _, err = await _signalbox(
            "controlplane", command, "--database-url", url, "--data-dir", str(tmp_path / "cp"), *extra
        )
        assert code == 1, (command, err)
        assert "Traceback" not in err, (command, err)
        assert "hunter2-pw" not in err
        assert (
            err.strip()
            .splitlines()[-1]
            .startswith(f"signalbox controlplane {command}: database: connection failed: ")
        ), (command, err)
    assert not (tmp_path / "pin.bin").exists()
    assert not (tmp_path / "hash-key").exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "1e9"])
async def test_serve_refuses_a_snapshot_ttl_no_node_could_use(tmp_path: Path, value: str) -> None:
    # 0 or less was taken: every snapshot was signed already expired, which every node not
    # started with --allow-expired refuses; 1e9 days overflowed the expiry's timestamp.
    code, err = await signalbox_exit(
        *("controlplane", "serve", "--data-dir", str(tmp_path / "cp"), "--listen", "127.0.0.1:0"),
        *("--node-listen", "127.0.0.1:0", "--snapshot-ttl-days", value),
        timeout=30,
    )
    assert code == 2, err
    assert (
        err.strip()
        == f"--snapshot-ttl-days: {float(value):g} is not a number of days above 0 and up to 36500"
    )
    assert not (tmp_path / "cp").exists()
