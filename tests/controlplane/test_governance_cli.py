"""``signalbox admin governance ...`` as real processes against a real control plane."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import yaml

from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin, admin_cli
from tests.fixtures.postgres import RunningControlPlane

PROFILE = """
input:
  rules:
    - name: no-codenames
      detector: terms
      options: {terms: [bluebird]}
      action: block
      status: invalid_argument
    - name: emails
      detector: email
      action: mask
"""


async def _with_stdin(address: str, token: str, stdin: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        "admin",
        "--target",
        address,
        "--token",
        token,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_apply_get_history_diff_through_the_cli(
    admin: Admin, control_plane: RunningControlPlane, tmp_path: Path
) -> None:
    await admin.seed("acme")
    cp, token = control_plane.address, control_plane.token
    path = tmp_path / "acme.yaml"
    path.write_text(PROFILE)
    code, out, err = await admin_cli(cp, token, "governance", "apply", "--tenant", "acme", str(path))
    assert (code, err) == (0, "")
    header, row = out.splitlines()
    assert header.split()[:5] == ["TENANT", "VERSION", "CREATED_BY", "CREATED_AT", "SNAPSHOT"]
    assert row.split()[1:3] == ["1", "admin:tests"]
    # From stdin, and the platform default without --tenant (or with --platform).
    code, _, err = await _with_stdin(
        cp, token, PROFILE.replace("bluebird", "redwing"), "governance", "apply", "--tenant", "acme", "-"
    )
    assert (code, err) == (0, "")
    code, _, err = await admin_cli(cp, token, "governance", "apply", "--platform", str(path))
    assert (code, err) == (0, "")
    default = await admin.GetGovernanceProfile(admin_pb2.GetGovernanceProfileRequest())
    assert (default.tenant_id, default.version) == ("", 1)

    code, out, _ = await admin_cli(cp, token, "governance", "get", "--tenant", "acme", "--format", "yaml")
    assert code == 0
    assert out.startswith("# governance profile of ")
    assert yaml.safe_load(out)["input"]["rules"][0]["options"] == {"terms": ["redwing"]}
    code, out, _ = await admin_cli(cp, token, "governance", "get", "--tenant", "acme", "--version", "1")
    assert json.loads(out)["input"]["rules"][0]["options"] == {"terms": ["bluebird"]}

    code, out, _ = await admin_cli(cp, token, "governance", "history", "--tenant", "acme")
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["1", "2"]

    code, out, _ = await admin_cli(
        cp, token, "governance", "diff", "--tenant", "acme", "--from", "1", "--to", "2"
    )
    assert code == 0
    assert out.startswith("--- governance profile of acme v1\n+++ governance profile of acme v2\n")
    assert '-            "bluebird"\n+            "redwing"\n' in out
    code, out, _ = await admin_cli(cp, token, "governance", "diff", "--tenant", "acme", "--format", "yaml")
    assert "\n-      - bluebird\n+      - redwing\n" in out

    # Snapshot history shows the profile versions per tenant.
    newest = await admin.latest_version()
    code, out, _ = await admin_cli(cp, token, "snapshot", "show", str(newest))
    section = out[out.index("governance profiles (2):") :].splitlines()
    assert [line.split()[:2] for line in section[2:4]] == [["(default)", "1"], ["acme", "2"]]
    code, out, _ = await admin_cli(cp, token, "snapshot", "diff", str(newest - 2), str(newest - 1))
    assert "~ governance acme (" in out
    assert "    version: 1 -> 2" in out
    assert '-            "bluebird"' in out

    code, out, _ = await admin_cli(cp, token, "governance", "delete", "--tenant", "acme")
    assert code == 0
    code, _, err = await admin_cli(cp, token, "governance", "get", "--tenant", "acme")
    assert code == 5
    assert err.startswith("signalbox admin: NOT_FOUND: governance profile of 'acme'")


async def test_test_prints_findings_and_actions(
    admin: Admin, control_plane: RunningControlPlane, tmp_path: Path
) -> None:
    await admin.seed("acme")
    await admin.ApplyGovernanceProfile(
        admin_pb2.ApplyGovernanceProfileRequest(tenant="acme", document=PROFILE)
    )
    cp, token = control_plane.address, control_plane.token
    text = "write to ann@example.org and bob@example.org"
    code, out, err = await admin_cli(cp, token, "governance", "test", "--tenant", "acme", "--text", text)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert (
        lines[0]
        == "profile: tenant "
        + (await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))).id
        + ", v1, input rules"
    )
    assert lines[2].split() == ["RULE", "DETECTOR", "ACTION", "COUNT", "POSITIONS", "EFFECT"]
    assert lines[3].split() == ["no-codenames", "terms", "block", "0", "-", "-"]
    assert lines[4].split()[:4] == ["emails", "email", "mask", "2"]
    assert "9-24 address, 29-44 address" in lines[4]
    assert lines[-2:] == ["text as it goes on:", "write to [EMAIL_1] and [EMAIL_2]"]
    # Positions, never the found values.
    assert "ann@example.org" not in "\n".join(lines[:-1])

    file = tmp_path / "prompt.txt"
    file.write_text("the bluebird plan")
    code, out, _ = await admin_cli(cp, token, "governance", "test", "--tenant", "acme", "--file", str(file))
    assert code == 0
    assert "outcome: refused by rule no-codenames" in out
    assert "blocked (INVALID_ARGUMENT)" in out
    code, out, _ = await _with_stdin(
        cp, token, "nothing here", "governance", "test", "--tenant", "acme", "-", "--json"
    )
    reply = json.loads(out)
    assert reply["result_text"] == "nothing here"
    assert [r["rule"] for r in reply["results"]] == ["no-codenames", "emails"]
    code, _, err = await admin_cli(cp, token, "governance", "test", "--tenant", "acme")
    assert (code, err.strip()) == (1, "governance test: give exactly one of --text, --file, or - (stdin)")


async def test_refusals_exit_with_the_status_and_name_the_path(
    admin: Admin, control_plane: RunningControlPlane, tmp_path: Path
) -> None:
    await admin.seed("acme")
    cp, token = control_plane.address, control_plane.token
    bad = tmp_path / "bad.yaml"
    bad.write_text("input:\n  rules:\n    - {name: x, detector: iban, action: classify}\n")
    code, _, err = await admin_cli(cp, token, "governance", "apply", "--tenant", "acme", str(bad))
    assert (code, err.strip()) == (
        2,
        "signalbox admin: INVALID_ARGUMENT: document.input.rules[0].data_class: required with action classify",
    )
    ops = await admin.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name="acme-ops", role="tenant_admin", tenant="acme")
    )
    good = tmp_path / "good.yaml"
    good.write_text(PROFILE)
    code, _, err = await admin_cli(cp, ops.token, "governance", "apply", str(good))
    assert code == 4
    assert err.startswith("signalbox admin: PERMISSION_DENIED: tenant: ")
    code, _, _ = await admin_cli(cp, ops.token, "governance", "apply", "--tenant", "acme", str(good))
    assert code == 0
    history = await admin.ListGovernanceProfileHistory(admin_pb2.ListGovernanceProfileHistoryRequest())
    assert list(history.versions) == []
