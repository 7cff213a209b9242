"""What ``signalbox admin`` prints: the :class:`Output` of a command, its table for people,
one row per Admin API object, and the routing explanation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message

from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.text import printable


class Output:
    """What a command prints: the message (for --json) and, for people, a table or ``text``."""

    def __init__(
        self,
        message: Message,
        headers: Sequence[str] = (),
        rows: Sequence[Sequence[object]] = (),
        text: str | None = None,
        exit_code: int = 0,
    ):
        self.message = message
        self.headers = headers
        self.rows = rows
        self.text = text
        self.exit_code = exit_code
        """Not 0: the call succeeded but did not do all that was asked (printed all the same)."""


def enum_name(enum: Any, prefix: str, value: int) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


CELL_LIMIT = 100_000
"""Clips only what no terminal shows anyway: a table cell is not shortened otherwise."""


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    # Every cell escaped, not only the fields known to come from nodes: a name, URL or reason
    # is whatever the control plane (or a server posing as one) sent, and an ESC in it would
    # rewrite the operator's terminal. Escaping is idempotent: fields escaped before are kept.
    cells = [[str(h).upper() for h in headers], *[[printable(c, CELL_LIMIT) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


TENANT_COLUMNS = ("id", "name", "tier", "active", "labels", "evidence")
KEY_COLUMNS = ("id", "tenant", "name", "prefix", "scopes", "expires")
SIGNING_KEY_COLUMNS = ("key_id", "state", "created", "revoked")
PROVIDER_COLUMNS = ("id", "name", "type", "base_url", "credential", "location")
MODEL_COLUMNS = ("id", "alias", "capabilities", "context", "deployments")
POLICY_COLUMNS = ("tenant", "version", "created_by", "created_at", "document")
NODE_COLUMNS = (
    "node",
    "group",
    "version",
    "mode",
    "scope",
    "applied",
    "lag",
    "last_ack",
    "last_nack",
    "reason",
    "last_seen",
    "connected",
    "status",
    "cert_expiry",
)
GROUP_COLUMNS = ("name", "mode", "site", "deployment", "tenants", "providers", "models", "version", "nodes")
SNAPSHOT_COLUMNS = ("version", "sha256", "created_at", "key_id", "bytes", "created_by", "reason")
SNAPSHOT_LIST_COLUMNS = ("version", "sha256", "created_at", "created_by", "reason", "exported")
EVIDENCE_COLUMNS = (
    "time", "chain", "seq", "correlation_id", "tenant", "api_key", "model", "outcome", "record_id", "hash",
)  # fmt: skip
EVIDENCE_CHAIN_COLUMNS = (
    "chain", "node", "shipped_seq", "proven_through", "pruned_through", "last_received", "state", "alarms",
    "alarm",
)  # fmt: skip
EVIDENCE_PRUNED_COLUMNS = ("chain", "first_seq", "last_seq", "last_hash", "pruned_before")


def _time(ts: Any) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if ts.seconds else ""


def tenant_row(t: admin_pb2.Tenant) -> tuple[object, ...]:
    return (
        t.id,
        t.name,
        t.tier,
        "yes" if t.active else "no",
        json.dumps(dict(t.labels), sort_keys=True),
        f"{EVIDENCE_CONTENT_FLAG[t.evidence.content]},{SPOOL_FULL_FLAG[t.evidence.spool_full]}",
    )


# ---- evidence settings (spool branch) ----
EVIDENCE_CONTENT_FLAG = {
    snapshot_pb2.EVIDENCE_CONTENT_DIGEST: "digest",
    snapshot_pb2.EVIDENCE_CONTENT_FULL: "full",
}
"""``--evidence-content`` values of ``admin tenant create/update``."""
SPOOL_FULL_FLAG = {
    snapshot_pb2.SPOOL_FULL_SERVE_AND_ALARM: "serve_and_alarm",
    snapshot_pb2.SPOOL_FULL_REFUSE: "refuse",
}
"""``--evidence-spool-full`` values of ``admin tenant create/update``."""


def scopes_column(scopes: Sequence[str]) -> str:
    """A key's scopes for a table, comma-separated; a key without scopes is unrestricted."""
    return ",".join(sorted(scopes)) or "unrestricted"


def key_row(k: admin_pb2.ApiKey) -> tuple[object, ...]:
    return (k.id, k.tenant_id, k.name, k.prefix + "...", scopes_column(k.scopes), _time(k.expires_at))


def provider_row(p: admin_pb2.Provider) -> tuple[object, ...]:
    if p.credential.HasField("sealed"):
        cred = f"sealed:{p.credential.sealed.node_group}({p.credential.sealed.key_id})"
    else:
        cred = (
            f"env:{p.credential.env}"
            if p.credential.env
            else (f"file:{p.credential.file}" if p.credential.file else "")
        )
    location = enum_name(snapshot_pb2.ProviderLocation, "PROVIDER_LOCATION_", p.location)
    return (p.id, p.name, p.type, p.base_url, cred, location)


def model_row(m: admin_pb2.Model) -> tuple[object, ...]:
    caps = ",".join(enum_name(common_pb2.Capability, "CAPABILITY_", c) for c in m.capabilities)
    deployments = ", ".join(f"{d.provider}:{d.upstream_model}x{d.weight}" for d in m.deployments)
    return (m.id, m.alias, caps, m.context_window, deployments)


def policy_row(p: admin_pb2.Policy) -> tuple[object, ...]:
    return (
        p.tenant_id or "(default)",
        p.version,
        p.created_by,
        _time(p.created_at),
        p.document_json or "(deleted)",
    )


def node_row(n: admin_pb2.Node) -> tuple[object, ...]:
    mode = enum_name(common_pb2.DeploymentMode, "DEPLOYMENT_MODE_", n.mode)
    scope = "/".join(printable(part, 100) or "-" for part in (n.deployment, n.node_group, n.site))
    # What nodes said is shown escaped: a control plane of another version may store it raw.
    return (
        printable(n.node_id),
        printable(n.node_group, 100),
        printable(n.software_version, 100),
        mode,
        scope,
        f"v{n.applied_version} {n.applied_hash.hex()[:12]}",
        n.lag,
        f"v{n.last_ack_version} {_time(n.last_ack_at)}" if n.last_ack_version else "",
        f"v{n.last_nack_version} {_time(n.last_nack_at)}" if n.last_nack_version else "",
        printable(n.last_nack_reason, 200),
        _time(n.last_seen_at),
        "yes" if n.connected else "no",
        "STALE" if n.stale else "ok",
        ("revoked " if n.revoked else "")
        + (_time(n.cert_not_after) if n.HasField("cert_not_after") else "-"),
    )


ENROLL_TOKEN_COLUMNS = ("id", "group", "mode", "site", "created_by", "expires", "used")


def enroll_token_row(t: admin_pb2.EnrollTokenInfo) -> tuple[object, ...]:
    used = f"{_time(t.used_at)} by {printable(t.used_by, 100)}" if t.used_at.seconds else "unused"
    return (t.id, t.group, t.mode or "-", t.site or "-", t.created_by, _time(t.expires_at), used)


def _selection(s: admin_pb2.Selection) -> str:
    return "all" if s.all else ",".join(s.names) or "none"


def group_row(g: admin_pb2.NodeGroup) -> tuple[object, ...]:
    return (
        g.name,
        enum_name(common_pb2.DeploymentMode, "DEPLOYMENT_MODE_", g.mode),
        g.site or "-",
        g.deployment or "-",
        _selection(g.tenants),
        _selection(g.providers),
        _selection(g.models),
        f"v{g.snapshot_version}" if g.snapshot_version else "-",
        g.nodes,
    )


def signing_key_row(k: admin_pb2.SigningKeyInfo) -> tuple[object, ...]:
    return (k.key_id, k.state, _time(k.created_at), _time(k.revoked_at) if k.HasField("revoked_at") else "")


def snapshot_row(s: admin_pb2.SnapshotInfo) -> tuple[object, ...]:
    return (
        s.version,
        s.payload_sha256.hex(),
        _time(s.created_at),
        s.signing_key_id,
        s.size_bytes,
        s.created_by,
        printable(s.reason, 200),
    )


def snapshot_list_row(s: admin_pb2.SnapshotInfo) -> tuple[object, ...]:
    return (
        s.version,
        s.payload_sha256.hex()[:12],
        _time(s.created_at),
        s.created_by,
        printable(s.reason, 200),
        _time(s.exported_at) if s.HasField("exported_at") else "",
    )


def snapshot_content(s: admin_pb2.SnapshotInfo) -> str:
    """A snapshot for people: its header, then one table per kind of object. Keys show id,
    name and prefix only; providers their credential reference."""
    c = s.content
    tenants = {t.id: t.name for t in c.tenants}
    header = [
        ("version", str(s.version)),
        ("sha256", s.payload_sha256.hex()),
        ("created", f"{_time(s.created_at)} by {s.created_by or '?'}: {printable(s.reason, 200)}"),
        ("expires", _time(c.expires_at)),
        ("signed by", s.signing_key_id),
        ("trusted keys", ", ".join(c.trusted_key_ids)),
        ("exported", _time(s.exported_at) if s.HasField("exported_at") else "no"),
    ]
    width = max(len(label) for label, _ in header)
    parts = ["".join(f"{label.ljust(width)}  {value}\n" for label, value in header)]
    identities: list[tuple[object, ...]] = [
        (
            i.id,
            tenants.get(i.tenant_id, i.tenant_id),
            "jwt",
            i.issuer.issuer,
            f"aud {','.join(i.issuer.audiences)}; keys {','.join(i.key_ids)}",
            scopes_column(i.issuer.scopes),
        )
        for i in c.jwt_issuers
    ]
    identities += [
        (
            m.id,
            tenants.get(m.tenant_id, m.tenant_id),
            "mtls",
            m.mapping.uri + ("*" if m.mapping.prefix else ""),
            "",
            scopes_column(m.mapping.scopes),
        )
        for m in c.mtls_mappings
    ]
    sections: list[tuple[str, Sequence[str], list[tuple[object, ...]]]] = [
        ("tenants", TENANT_COLUMNS, [tenant_row(t) for t in c.tenants]),
        (
            "keys",
            ("id", "tenant", "name", "prefix", "scopes", "expires"),
            [
                (
                    k.id,
                    tenants.get(k.tenant_id, k.tenant_id),
                    k.name,
                    f"{k.prefix}..." if k.prefix else "(deleted since)",
                    scopes_column(k.scopes),
                    _time(k.expires_at),
                )
                for k in c.keys
            ],
        ),
        ("identities", ("id", "tenant", "type", "match", "detail", "scopes"), identities),
        ("providers", PROVIDER_COLUMNS, [provider_row(p) for p in c.providers]),
        ("models", MODEL_COLUMNS, [model_row(m) for m in c.models]),
        (
            "policies",
            ("tenant", "version", "document"),
            [
                (
                    tenants.get(p.tenant_id, p.tenant_id) if p.tenant_id else "(default)",
                    p.version,
                    p.document_json,
                )
                for p in c.policies
            ],
        ),
        (
            "governance profiles",
            ("tenant", "version", "document"),
            [
                (
                    tenants.get(g.tenant_id, g.tenant_id) if g.tenant_id else "(default)",
                    g.version,
                    g.document_json,
                )
                for g in c.governance_profiles
            ],
        ),
    ]
    for title, headers, rows in sections:
        body = table(headers, rows) if rows else "(none)"
        parts.append(f"\n{title} ({len(rows)}):\n{body}\n")
    return "".join(parts)


def snapshot_diff(d: admin_pb2.DiffSnapshotsResponse) -> str:
    """Per object: +/-/~ with kind and name, then each changed field old -> new, and a
    policy's document diff."""
    if not d.changes:
        return f"v{d.from_version} -> v{d.to_version}: no changes\n"
    mark = {"added": "+", "removed": "-", "changed": "~"}
    lines = [f"v{d.from_version} -> v{d.to_version}: {len(d.changes)} change(s)"]
    for c in d.changes:
        lines.append(f"{mark.get(c.change, '?')} {c.kind} {c.name} ({c.id or 'default'}) {c.change}")
        for f in c.fields:
            if c.change == "changed":
                lines.append(f"    {f.field}: {f.old or '(none)'} -> {f.new or '(none)'}")
            else:
                lines.append(f"    {f.field}: {f.new if c.change == 'added' else f.old}")
        if c.document_diff:
            lines += ["    " + line for line in c.document_diff.splitlines()]
    return "\n".join(lines) + "\n"


def deleted(response: admin_pb2.DeleteResponse) -> Output:
    return Output(response, ("snapshot_version",), [(response.snapshot_version,)])


def explanation(r: admin_pb2.ExplainRouteResponse) -> str:
    """The decision for people: one labelled line per fact, one line per dropped candidate."""
    d = r.decision
    lines: list[tuple[str, str]] = [
        ("policy", f"{d.policy_id} v{d.policy_version}"),
        ("rule", d.rule),
        ("strategy", d.strategy),
        ("reason", d.reason),
        ("input tokens", f"{r.estimated_input_tokens} (estimated)"),
        ("considered", ", ".join(d.candidates)),
    ]
    lines += [("dropped", f"{x.model}: {x.reason}") for x in d.dropped] or [("dropped", "(none)")]
    lines.append(("chosen", f"{r.plan[0]} (deployment {d.chosen_deployment})" if r.plan else "(none)"))
    lines += [("fallback", f"{i}. {label}") for i, label in enumerate(r.plan[1:], 1)] or [
        ("fallback", "(none)")
    ]
    lines.append(("split arm", r.arm or "(none)"))
    lines.append(("shadow", r.shadow or "(none)"))
    width = max(len(label) for label, _ in lines)
    return "".join(f"{label.ljust(width)}  {value}\n" for label, value in lines)


def evidence_row(r: admin_pb2.EvidenceRecord) -> tuple[object, ...]:
    # Nodes wrote these strings: shown escaped.
    return (
        _time(r.ts),
        printable(r.chain_id, 100),
        r.seq,
        printable(r.correlation_id, 100),
        printable(r.tenant_id, 100),
        printable(r.api_key_id, 100),
        printable(r.model, 100),
        printable(r.outcome, 64),
        printable(r.record_id, 64),
        r.hash.hex()[:16],
    )


def evidence_chain_row(c: admin_pb2.EvidenceChainStatus) -> tuple[object, ...]:
    return (
        printable(c.chain_id, 100),
        printable(c.node_id, 100),
        c.head_seq,
        c.proven_through_seq or "-",
        c.pruned_through_seq or "-",
        _time(c.last_received_at),
        f"{c.state}, stale" if c.stale else c.state,
        c.alarms,
        printable(c.alarm, 200),
    )


def evidence_pruned_row(r: admin_pb2.EvidencePrunedRange) -> tuple[object, ...]:
    return (
        printable(r.chain_id, 100),
        r.first_seq,
        r.last_seq,
        r.last_hash.hex()[:16],
        _time(r.pruned_before),
    )


# ---- admin security ----

ADMIN_TOKEN_COLUMNS = ("id", "name", "role", "tenant", "prefix", "created", "created_by", "revoked")
ADMIN_MTLS_COLUMNS = ("id", "uri", "name", "role", "tenant", "created")
ADMIN_AUDIT_COLUMNS = ("at", "actor", "role", "action", "target", "tenant", "result", "before", "after")


def admin_token_row(t: admin_pb2.AdminTokenInfo) -> tuple[object, ...]:
    return (
        t.id,
        printable(t.name, 60),
        t.role,
        t.tenant_id,
        t.prefix,
        _time(t.created_at),
        printable(t.created_by, 60),
        _time(t.revoked_at),
    )


def admin_mtls_row(m: admin_pb2.AdminMtlsIdentity) -> tuple[object, ...]:
    return (m.id, printable(m.uri, 100), printable(m.name, 60), m.role, m.tenant_id, _time(m.created_at))


def admin_audit_row(e: admin_pb2.AdminAuditEntry) -> tuple[object, ...]:
    # Digests are shown by their first 12 hex digits; --json has them whole.
    return (
        _time(e.at),
        printable(e.actor, 60),
        e.actor_role + (f"@{e.actor_tenant}" if e.actor_tenant else ""),
        printable(e.action, 60),
        printable(e.target, 80),
        e.tenant,
        e.result,
        e.before_sha256[:12],
        e.after_sha256[:12],
    )
