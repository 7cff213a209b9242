"""Governance profiles through the real Admin API on real PostgreSQL: versions, diff, test,
delete; authorization per role; the audit trail; refused documents (path named, nothing
stored); and the snapshots that carry them, full, by delta, and per node group."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from dataplane.snapshot.delta import rebuild
from dataplane.snapshot.layout import GOVERNANCE_PROFILES, scan
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane, sql_rows

PROFILE = """
description: acme's rules
input:
  rules:
    - name: no-secrets
      detector: terms
      options: {terms: [project-x]}
      action: block
    - name: ibans
      detector: iban
      action: classify
      data_class: confidential
    - name: emails
      detector: email
      action: redact
      placeholder: "[EMAIL]"
"""
DEFAULT = '{"input": {"rules": [{"name": "emails", "detector": "email", "action": "flag"}]}}'
IBAN = "DE89 3704 0044 0532 0130 00"


async def _refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    return str(caught.value.details())


def _apply(tenant: str, document: str) -> admin_pb2.ApplyGovernanceProfileRequest:
    return admin_pb2.ApplyGovernanceProfileRequest(tenant=tenant, document=document)


async def _snapshot(admin: Admin, version: int = 0, group: str = "") -> snapshot_pb2.Snapshot:
    """The stored payload of ``version`` (0: the newest) as nodes receive it."""
    envelope = await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest(group=group))
    snapshot = snapshot_pb2.Snapshot.FromString(envelope.payload)
    assert not version or snapshot.version == version
    return snapshot


async def test_apply_get_history_diff_delete_round_trip(admin: Admin) -> None:
    await admin.seed("acme")
    acme = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))
    first = await admin.ApplyGovernanceProfile(_apply("acme", PROFILE))
    assert (first.tenant_id, first.version, first.created_by) == (acme.id, 1, "admin:tests")
    assert first.snapshot_version == await admin.latest_version()
    stored = json.loads(first.document_json)
    assert stored["input"]["rules"][0]["options"] == {"terms": ["project-x"]}
    # Canonical: sorted keys, no whitespace, whatever the submitted text looked like.
    assert first.document_json == json.dumps(stored, sort_keys=True, separators=(",", ":"))

    second = await admin.ApplyGovernanceProfile(_apply("acme", PROFILE.replace("[EMAIL]", "<mail>")))
    assert second.version == 2
    current = await admin.GetGovernanceProfile(admin_pb2.GetGovernanceProfileRequest(tenant="acme"))
    assert (current.version, current.document_json) == (2, second.document_json)
    old = await admin.GetGovernanceProfile(admin_pb2.GetGovernanceProfileRequest(tenant=acme.id, version=1))
    assert old.document_json == first.document_json

    diff = await admin.DiffGovernanceProfile(admin_pb2.DiffGovernanceProfileRequest(tenant="acme"))
    assert (diff.from_version, diff.to_version) == (1, 2)
    assert '\n-        "placeholder": "[EMAIL]"\n+        "placeholder": "<mail>"\n' in diff.diff
    as_yaml = await admin.DiffGovernanceProfile(
        admin_pb2.DiffGovernanceProfileRequest(tenant="acme", from_version=1, to_version=2, format="yaml")
    )
    assert "\n-    placeholder: '[EMAIL]'\n+    placeholder: <mail>\n" in as_yaml.diff
    details = await _refused(
        admin.DiffGovernanceProfile(admin_pb2.DiffGovernanceProfileRequest(tenant="acme", format="toml")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details == "format: must be one of json, yaml"

    deleted = await admin.DeleteGovernanceProfile(admin_pb2.DeleteGovernanceProfileRequest(tenant="acme"))
    assert deleted.snapshot_version == await admin.latest_version()
    await _refused(
        admin.GetGovernanceProfile(admin_pb2.GetGovernanceProfileRequest(tenant="acme")),
        grpc.StatusCode.NOT_FOUND,
    )
    history = await admin.ListGovernanceProfileHistory(
        admin_pb2.ListGovernanceProfileHistoryRequest(tenant="acme")
    )
    assert [(p.version, p.deleted, bool(p.document_json)) for p in history.versions] == [
        (1, False, True),
        (2, False, True),
        (3, True, False),
    ]
    await _refused(
        admin.DeleteGovernanceProfile(admin_pb2.DeleteGovernanceProfileRequest(tenant="acme")),
        grpc.StatusCode.NOT_FOUND,
    )
    # The platform default is versioned on its own.
    default = await admin.ApplyGovernanceProfile(_apply("", DEFAULT))
    assert (default.tenant_id, default.version) == ("", 1)


async def test_test_reports_rules_positions_and_the_resulting_text(admin: Admin) -> None:
    await admin.seed("acme")
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="other", tier="gold"))
    # No profile at all: nothing runs, the text goes on as it is.
    nothing = await admin.TestGovernanceProfile(
        admin_pb2.TestGovernanceProfileRequest(tenant="acme", text="a@b.example")
    )
    assert (nothing.profile_version, list(nothing.results), nothing.result_text) == (0, [], "a@b.example")

    await admin.ApplyGovernanceProfile(_apply("acme", PROFILE))
    default = await admin.ApplyGovernanceProfile(_apply("", DEFAULT))
    text = f"pay {IBAN} and mail jane@corp.example"
    r = await admin.TestGovernanceProfile(admin_pb2.TestGovernanceProfileRequest(tenant="acme", text=text))
    assert r.profile_version == 1
    assert r.stage == "input"
    by_rule = {x.rule: x for x in r.results}
    assert [x.rule for x in r.results] == ["no-secrets", "ibans", "emails"]
    assert (by_rule["no-secrets"].count, by_rule["no-secrets"].effect) == (0, "")
    iban = by_rule["ibans"]
    assert (iban.detector, iban.action, iban.count) == ("iban", "classify", 1)
    assert text[iban.spans[0].start : iban.spans[0].end] == IBAN
    assert iban.effect == "data class -> confidential"
    email = by_rule["emails"]
    assert text[email.spans[0].start : email.spans[0].end] == "jane@corp.example"
    assert (r.result_text, r.data_class, r.blocked_by) == (f"pay {IBAN} and mail [EMAIL]", "confidential", "")
    # The reply carries positions, never the found values themselves.
    assert "jane@corp.example" not in str(list(r.results))

    blocked = await admin.TestGovernanceProfile(
        admin_pb2.TestGovernanceProfileRequest(tenant="acme", text="about project-x, mail a@b.example")
    )
    assert (blocked.blocked_by, blocked.result_text) == ("no-secrets", "")
    assert blocked.results[0].effect == "blocked (PERMISSION_DENIED)"
    assert blocked.results[2].effect == "not run (refused before)"

    # A tenant without a profile of its own is governed by the platform default.
    fallback = await admin.TestGovernanceProfile(
        admin_pb2.TestGovernanceProfileRequest(tenant="other", text="a@b.example")
    )
    assert (fallback.profile_tenant_id, fallback.profile_version) == ("", default.version)
    assert (fallback.results[0].effect, fallback.result_text) == ("flagged", "a@b.example")
    # As a node does: a limit refuses before any rule runs; masks number distinct values.
    masking = '{"limits": {"max_characters": 40}, "input": {"rules": [{"name": "m", "detector": "email", "action": "mask"}]}}'
    await admin.ApplyGovernanceProfile(_apply("other", masking))
    masked = await admin.TestGovernanceProfile(
        admin_pb2.TestGovernanceProfileRequest(tenant="other", text="a@b.example, a@b.example, c@d.example")
    )
    assert masked.result_text == "[EMAIL_1], [EMAIL_1], [EMAIL_2]"
    assert (masked.results[0].count, masked.results[0].effect) == (3, "masked 3 as [EMAIL_n]")
    over = await admin.TestGovernanceProfile(
        admin_pb2.TestGovernanceProfileRequest(tenant="other", text="x" * 41)
    )
    assert (over.blocked_by, over.result_text) == ("limits.max_characters", "")
    assert [(x.rule, x.effect) for x in over.results] == [
        ("limits.max_characters", "refused: 41 over the limit of 40"),
        ("m", "not run (refused before)"),
    ]
    output = await admin.TestGovernanceProfile(
        admin_pb2.TestGovernanceProfileRequest(tenant="acme", text="x", stage="output")
    )
    assert (list(output.results), output.result_text) == ([], "x")
    details = await _refused(
        admin.TestGovernanceProfile(admin_pb2.TestGovernanceProfileRequest(tenant="acme", stage="during")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details == "stage: must be input or output"


@pytest.mark.parametrize(
    ("document", "field", "problem"),
    [
        (
            '{"input": {"rules": [{"name": "a", "detector": "email", "action": "flag", "colour": "red"}]}}',
            "document.input.rules[0].colour:",
            "unknown field",
        ),
        ('{"inputs": {}}', "document", "inputs"),
        (
            '{"input": {"rules": [{"name": "a", "detector": "email", "action": "classify"}]}}',
            "document.input.rules[0].data_class",
            "required with action classify",
        ),
        (
            '{"input": {"rules": [{"name": "a", "detector": "terms", "options": {"terms": [" "]}, '
            '"action": "flag"}]}}',
            "document.input.rules[0].options.terms[0]:",
            "must not be blank",
        ),
        (
            '{"input": {"rules": [{"name": "a", "detector": "email", "options": {"bogus": 1}, '
            '"action": "flag"}]}}',
            "document.input.rules[0].options.bogus:",
            "unknown option",
        ),
        (
            '{"input": {"rules": [{"name": "a", "detector": "telepathy", "action": "flag"}]}}',
            "document.input.rules[0].detector",
            "unknown detector",
        ),
        (
            '{"output": {"rules": [{"name": "a", "detector": "email", "action": "mask"}]}}',
            "document.output.rules[0].action",
            "input action only",
        ),
        ("- just\n- a list\n", "document", "must be an object"),
        # JSON and YAML can escape a lone surrogate, which no UTF-8 column can hold: an
        # INTERNAL from the driver before it was refused here.
        (
            '{"input": {"rules": [{"name": "a", "detector": "terms", "options": {"terms": ["\\ud800"]}, '
            '"action": "flag"}]}}',
            "document.input.rules[0].options.terms[0]:",
            "lone surrogate",
        ),
        ('description: "\\udfff"\n', "document.description:", "lone surrogate"),
        ("a: &x 1\nb: *x\n", "document", "alias"),
        ("", "document", "must not be empty"),
    ],
)
async def test_invalid_documents_are_refused_naming_the_path_and_nothing_is_stored(
    admin: Admin, control_plane: RunningControlPlane, document: str, field: str, problem: str
) -> None:
    await admin.seed("acme")
    before = await admin.latest_version()
    details = await _refused(
        admin.ApplyGovernanceProfile(_apply("acme", document)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details.startswith(field), details
    assert problem in details.lower(), details
    assert len(details) < 500
    assert sql_rows(control_plane.database_url, "SELECT count(*) FROM governance_profiles")[0][0] == 0
    assert await admin.latest_version() == before


async def test_oversized_documents_and_texts_are_refused_before_parsing(admin: Admin) -> None:
    await admin.seed("acme")
    huge = '{"description": "' + "x" * (256 * 1024) + '"}'
    details = await _refused(
        admin.ApplyGovernanceProfile(_apply("acme", huge)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details.startswith("document: at most ")
    details = await _refused(
        admin.TestGovernanceProfile(
            admin_pb2.TestGovernanceProfileRequest(tenant="acme", text="y" * 300_000)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details.startswith("text: at most ")
    # And the control plane keeps serving.
    assert (await admin.ApplyGovernanceProfile(_apply("acme", DEFAULT))).version == 1


async def test_roles_tenant_admin_own_tenant_only_auditor_reads(admin: Admin) -> None:
    await admin.seed("acme")
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="beta", tier="gold"))
    await admin.ApplyGovernanceProfile(_apply("beta", DEFAULT))
    await admin.ApplyGovernanceProfile(_apply("", DEFAULT))
    ops = await admin.CreateAdminToken(
        admin_pb2.CreateAdminTokenRequest(name="acme-ops", role="tenant_admin", tenant="acme")
    )
    auditor = await admin.CreateAdminToken(admin_pb2.CreateAdminTokenRequest(name="aud", role="auditor"))
    acme_admin, reader = admin.with_token(ops.token), admin.with_token(auditor.token)

    # A tenant admin: its own tenant, by name or left empty... no: empty is the platform default.
    own = await acme_admin.ApplyGovernanceProfile(_apply("acme", PROFILE))
    assert own.version == 1
    got = await acme_admin.GetGovernanceProfile(admin_pb2.GetGovernanceProfileRequest(tenant="acme"))
    assert got.version == 1
    # Another tenant's profile: as if it did not exist; the platform default: refused.
    details = await _refused(
        acme_admin.ApplyGovernanceProfile(_apply("beta", PROFILE)), grpc.StatusCode.NOT_FOUND
    )
    assert "beta" in details
    await _refused(
        acme_admin.GetGovernanceProfile(admin_pb2.GetGovernanceProfileRequest(tenant="beta")),
        grpc.StatusCode.NOT_FOUND,
    )
    for call in (
        acme_admin.ApplyGovernanceProfile(_apply("", PROFILE)),
        acme_admin.DeleteGovernanceProfile(admin_pb2.DeleteGovernanceProfileRequest()),
        acme_admin.GetGovernanceProfile(admin_pb2.GetGovernanceProfileRequest()),
    ):
        await _refused(call, grpc.StatusCode.PERMISSION_DENIED)

    # An auditor reads, diffs and tests everything, and changes nothing.
    for tenant in ("acme", "beta", ""):
        await reader.GetGovernanceProfile(admin_pb2.GetGovernanceProfileRequest(tenant=tenant))
        await reader.ListGovernanceProfileHistory(
            admin_pb2.ListGovernanceProfileHistoryRequest(tenant=tenant)
        )
    tested = await reader.TestGovernanceProfile(
        admin_pb2.TestGovernanceProfileRequest(tenant="acme", text="project-x")
    )
    assert tested.blocked_by == "no-secrets"
    for call in (
        reader.ApplyGovernanceProfile(_apply("acme", DEFAULT)),
        reader.ApplyGovernanceProfile(_apply("", DEFAULT)),
        reader.DeleteGovernanceProfile(admin_pb2.DeleteGovernanceProfileRequest(tenant="beta")),
    ):
        await _refused(call, grpc.StatusCode.PERMISSION_DENIED)
    # Nothing the refused calls named changed.
    beta = await admin.ListGovernanceProfileHistory(
        admin_pb2.ListGovernanceProfileHistoryRequest(tenant="beta")
    )
    default = await admin.ListGovernanceProfileHistory(admin_pb2.ListGovernanceProfileHistoryRequest())
    assert [p.version for p in beta.versions] == [p.version for p in default.versions] == [1]


async def test_changes_are_in_the_audit_trail_with_digests(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    await admin.seed("acme")
    acme = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))
    await admin.ApplyGovernanceProfile(_apply("acme", PROFILE))
    await admin.ApplyGovernanceProfile(_apply("acme", DEFAULT))
    await admin.ApplyGovernanceProfile(_apply("", DEFAULT))
    await admin.DeleteGovernanceProfile(admin_pb2.DeleteGovernanceProfileRequest(tenant="acme"))
    auditor = await admin.CreateAdminToken(admin_pb2.CreateAdminTokenRequest(name="aud", role="auditor"))
    await _refused(
        admin.with_token(auditor.token).ApplyGovernanceProfile(_apply("acme", PROFILE)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    reply = await admin.ListAdminAudit(admin_pb2.ListAdminAuditRequest(limit=1000))
    rows = [r for r in reversed(reply.entries) if "GovernanceProfile" in r.action]
    assert [(r.action, r.tenant, r.result, r.actor) for r in rows[:4]] == [
        ("ApplyGovernanceProfile", acme.id, "OK", "admin:tests"),
        ("ApplyGovernanceProfile", acme.id, "OK", "admin:tests"),
        ("ApplyGovernanceProfile", "", "OK", "admin:tests"),
        ("DeleteGovernanceProfile", acme.id, "OK", "admin:tests"),
    ]
    # The refusal is a row too (refused before its tenant was looked up).
    assert [(r.action, r.result, r.actor, r.target) for r in rows[4:]] == [
        ("ApplyGovernanceProfile", "PERMISSION_DENIED", "admin:aud", "tenant=acme")
    ]
    first, second, platform, delete = rows[:4]
    # A test's text is the caller's data: its row names the tenant only.
    secret = "4111 1111 1111 1111 card of jane@corp.example"
    await admin.TestGovernanceProfile(admin_pb2.TestGovernanceProfileRequest(tenant="acme", text=secret))
    audit = "\n".join(str(tuple(r)) for r in sql_rows(control_plane.database_url, "SELECT * FROM audit_log"))
    assert "TestGovernanceProfile" in audit
    assert "jane@corp.example" not in audit
    # The card number as typed: "4111" alone also turns up inside the rows' hex digests.
    assert "4111 1111" not in audit
    # A first version is a create (no digests, as for any create); each change after it
    # starts where the previous one ended.
    assert (first.before_sha256, first.after_sha256, platform.before_sha256) == ("", "", "")
    assert len(second.before_sha256) == len(second.after_sha256) == 64
    assert second.before_sha256 != second.after_sha256
    assert delete.before_sha256 == second.after_sha256
    assert delete.after_sha256 not in ("", second.after_sha256)


async def test_the_published_snapshot_carries_default_and_tenant_profiles(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    await admin.seed("acme")
    acme = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))
    await admin.ApplyGovernanceProfile(_apply("acme", PROFILE))
    before = await admin.latest_version()
    applied = await admin.ApplyGovernanceProfile(_apply("", DEFAULT))
    # Every apply publishes a new version, as a policy apply does.
    assert applied.snapshot_version == before + 1
    snapshot = await _snapshot(admin, applied.snapshot_version)
    assert [(g.tenant_id, g.version) for g in snapshot.governance_profiles] == [("", 1), (acme.id, 1)]
    default, own = snapshot.governance_profiles
    assert json.loads(default.document_json) == json.loads(DEFAULT)
    assert json.loads(own.document_json)["description"] == "acme's rules"

    # The delta stored for nodes on the previous version carries the changed profile, and
    # rebuilds exactly the signed payload.
    base = (await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())).payload
    acme_v2 = await admin.ApplyGovernanceProfile(_apply("acme", DEFAULT))
    full = (await admin.ExportSnapshot(admin_pb2.ExportSnapshotRequest())).payload
    (stored,) = sql_rows(
        control_plane.database_url,
        f"SELECT delta FROM snapshots WHERE node_group = 'default' AND version = {acme_v2.snapshot_version}",
    )
    delta = sync_pb2.SnapshotDelta.FromString(bytes(stored[0]))
    splices = [s for s in delta.splices if s.field == GOVERNANCE_PROFILES]
    assert [s.field for s in delta.splices] == [GOVERNANCE_PROFILES]
    changed = snapshot_pb2.Snapshot.FromString(b"".join(splices[0].insert)).governance_profiles
    assert [(g.tenant_id, g.version) for g in changed] == [(acme.id, 2)]
    rebuilt = rebuild(scan(base), delta)
    assert (rebuilt.version, bytes(rebuilt.payload)) == (acme_v2.snapshot_version, full)

    # Snapshot history: the content and the diff name the profile version per tenant.
    info = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(include_content=True))
    assert [(g.tenant_id, g.version) for g in info.content.governance_profiles] == [("", 1), (acme.id, 2)]
    diff = await admin.DiffSnapshots(
        admin_pb2.DiffSnapshotsRequest(
            from_version=applied.snapshot_version, to_version=acme_v2.snapshot_version
        )
    )
    (change,) = diff.changes
    assert (change.kind, change.name, change.change) == ("governance", "acme", "changed")
    assert [(f.field, f.old, f.new) for f in change.fields] == [("version", "1", "2")]
    assert "-" in change.document_diff
    assert "no-secrets" in change.document_diff


async def test_groups_get_the_default_and_their_tenants_profiles_only(admin: Admin) -> None:
    await admin.seed("acme")
    beta = await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="beta", tier="gold"))
    acme = await admin.GetTenant(admin_pb2.GetTenantRequest(tenant="acme"))
    await admin.CreateNodeGroup(
        admin_pb2.CreateNodeGroupRequest(
            group=admin_pb2.NodeGroup(name="eu", mode=1, tenants=admin_pb2.Selection(names=["acme"]))
        )
    )
    for tenant in ("acme", "beta", ""):
        await admin.ApplyGovernanceProfile(_apply(tenant, DEFAULT))
    eu = await _snapshot(admin, group="eu")
    assert [g.tenant_id for g in eu.governance_profiles] == ["", acme.id]
    everyone = await _snapshot(admin)
    assert sorted(g.tenant_id for g in everyone.governance_profiles) == sorted(["", acme.id, beta.id])
    # A change to beta's profile is no change for eu: its nodes hear nothing.
    eu_version = eu.version
    await admin.ApplyGovernanceProfile(_apply("beta", PROFILE))
    assert (await _snapshot(admin, group="eu")).version == eu_version


async def test_rollback_keeps_the_current_profiles(admin: Admin) -> None:
    await admin.seed("acme")
    strict = await admin.ApplyGovernanceProfile(_apply("acme", PROFILE))
    await admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant="acme", tier="silver"))
    weak = await admin.ApplyGovernanceProfile(_apply("acme", DEFAULT))
    stricter = await admin.ApplyGovernanceProfile(_apply("acme", PROFILE.replace("project-x", "project-y")))
    # Back to the version of the strict profile: the tier comes back, the profile in force stays.
    result = await admin.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(version=strict.snapshot_version))
    snapshot = await _snapshot(admin, result.snapshot_version)
    assert snapshot.tenants[0].tier == "gold"
    assert [g.version for g in snapshot.governance_profiles] == [stricter.version]
    history = await admin.ListGovernanceProfileHistory(
        admin_pb2.ListGovernanceProfileHistoryRequest(tenant="acme")
    )
    assert [p.version for p in history.versions] == [strict.version, weak.version, stricter.version]


async def test_the_readme_example_profile_applies(admin: Admin) -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme[readme.index("### Governance profiles") :]
    example = section[section.index("```yaml\n") + 8 : section.index("```\n", section.index("```yaml\n"))]
    await admin.seed("acme")
    applied = await admin.ApplyGovernanceProfile(_apply("acme", example))
    assert [r["name"] for r in json.loads(applied.document_json)["input"]["rules"]] == [
        "no-codenames",
        "ibans",
        "emails",
    ]
