"""``signalbox controlplane ...`` and ``signalbox admin ...`` as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from dataplane.config.envelope import verify
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane

TIMEOUT = 60.0


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
        "SIM_KEY",
    )
    await run("model", "create", "small", "--deployment", "sim:small-v1", "--capability", "chat")
    secret_out = await run("key", "create", "--tenant", "acme", "--name", "ci")
    assert "sbx_" in secret_out.strip().splitlines()[-1]
    policy = tmp_path / "policy.yaml"
    policy.write_text("default_model: small\n")
    await run("policy", "apply", "--tenant", "acme", "-f", str(policy))

    table = await run("tenant", "list")
    assert table.splitlines()[0].split() == ["ID", "NAME", "TIER", "ACTIVE", "LABELS"]
    assert "acme" in table
    history = json.loads(await run("--json", "policy", "history", "--tenant", "acme"))
    assert [v["document_json"] for v in history["versions"]] == ['{"default_model":"small"}']
    info = json.loads(await run("--json", "snapshot", "show"))
    assert int(info["version"]) == await admin.latest_version()
    assert "NODE" in await run("node", "list")
    explained = await run("route", "explain", "--tenant", "acme")
    assert explained.splitlines()[1].split()[:2] == ["0", "small@sim"]

    code, _, err = await _signalbox("admin", "tenant", "create", "acme", env=env)
    assert code == 6
    assert "ALREADY_EXISTS" in err
    code, _, err = await _signalbox("admin", "--token", "sbxadm_nope", "tenant", "list", env=env)
    assert code == 3
    assert "UNAUTHENTICATED" in err


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
    assert snapshot_pb2.Snapshot.FromString(envelope.payload).version == await admin.latest_version()


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
