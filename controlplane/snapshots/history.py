"""What a stored snapshot says, in admin terms, and what changed between two of them.

Pure functions over decoded ``Snapshot`` messages. Nothing here ever reads a key's hash
or a credential: keys are shown by id, name and scopes; providers by their credential
*reference* (``env:NAME`` / ``file:PATH``); JWT issuers by the key ids of their JWKS.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict

from controlplane.errors import StoredSnapshotInvalid
from dataplane.snapshot.identities import IdentityInvalid, parse_jwks
from signalbox.api.config.v1 import snapshot_pb2

KINDS = ("scope", "tenant", "key", "identity", "provider", "model", "policy", "governance")
DEFAULT_POLICY = "(default)"


def decode(payload: bytes, version: int) -> snapshot_pb2.Snapshot:
    """The stored payload as a message; ``StoredSnapshotInvalid`` if it does not parse."""
    snapshot = snapshot_pb2.Snapshot()
    try:
        snapshot.ParseFromString(payload)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise StoredSnapshotInvalid(f"snapshot v{version}", "stored payload does not parse") from exc
    return snapshot


def credential_ref(ref: snapshot_pb2.SecretRef) -> str:
    """A provider credential as a reference, never a value."""
    if ref.env:
        return f"env:{ref.env}"
    if ref.file:
        return f"file:{ref.file}"
    return ""


def key_ids(issuer: snapshot_pb2.JwtIssuer) -> list[str]:
    """The key ids of a JWT issuer's JWKS, sorted."""
    try:
        return sorted(parse_jwks(issuer.jwks_json))
    except IdentityInvalid:
        return []  # stored by a release with other rules: listed, keys unnamed


def identity_view(identity: snapshot_pb2.TenantIdentity, tenant: str) -> View:
    """A JWT issuer by its issuer, audiences, algorithms, claims and the key ids of its JWKS
    (the JWKS text itself, public keys, is left out); an mTLS mapping by its URI."""
    if identity.WhichOneof("kind") == "jwt":
        fields = _dict(identity.jwt)
        fields.pop("jwks_json", None)
        fields["key_ids"] = key_ids(identity.jwt)
        name = identity.jwt.issuer
    else:
        fields = _dict(identity.mtls)
        name = identity.mtls.uri + ("*" if identity.mtls.prefix else "")
    return View(
        "identity", identity.id, name, {"tenant": tenant, "type": identity.WhichOneof("kind"), **fields}
    )


def _dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


@dataclass(frozen=True, slots=True)
class View:
    """One object of a snapshot as the admin sees it: its id, display name and fields."""

    kind: str
    id: str
    name: str
    fields: dict[str, Any]
    document: str = ""


def views(snapshot: snapshot_pb2.Snapshot) -> dict[tuple[str, str], View]:
    """Every object of ``snapshot`` keyed by (kind, id); policies and governance profiles
    keyed by their tenant."""
    tenants = {t.id: t.name for t in snapshot.tenants}
    providers = {p.id: p.name for p in snapshot.providers}
    out: dict[tuple[str, str], View] = {}
    # Which nodes it is for: a group's deployment or site changing is a change of its own.
    out["scope", ""] = View("scope", "", "scope", _dict(snapshot.scope))
    for t in snapshot.tenants:
        out["tenant", t.id] = View(
            "tenant",
            t.id,
            t.name,
            {"name": t.name, "tier": t.tier, "active": t.active, "labels": dict(t.labels)},
        )
    for k in snapshot.api_keys:
        out["key", k.id] = View(
            "key",
            k.id,
            k.name,
            {
                "tenant": tenants.get(k.tenant_id, k.tenant_id),
                "name": k.name,
                "scopes": sorted(k.scopes),
                "expires_at": k.expires_at.ToJsonString() if k.HasField("expires_at") else "",
            },
        )
    for i in snapshot.identities:
        out["identity", i.id] = identity_view(i, tenants.get(i.tenant_id, i.tenant_id))
    for p in snapshot.providers:
        fields = _dict(p)
        fields.pop("id", None)
        fields["credential"] = credential_ref(p.credential)
        out["provider", p.id] = View("provider", p.id, p.name, fields)
    for m in snapshot.models:
        fields = _dict(m)
        fields.pop("id", None)
        fields["deployments"] = [
            f"{providers.get(d.provider_id, d.provider_id)}:{d.upstream_model}x{d.weight}"
            for d in m.deployments
        ]
        out["model", m.id] = View("model", m.id, m.alias, fields)
    for pol in snapshot.policies:
        name = tenants.get(pol.tenant_id, pol.tenant_id) if pol.tenant_id else DEFAULT_POLICY
        key = pol.tenant_id or DEFAULT_POLICY
        out["policy", key] = View("policy", pol.tenant_id, name, {"version": pol.version}, pol.document_json)
    for gov in snapshot.governance_profiles:
        name = tenants.get(gov.tenant_id, gov.tenant_id) if gov.tenant_id else DEFAULT_POLICY
        key = gov.tenant_id or DEFAULT_POLICY
        out["governance", key] = View(
            "governance", gov.tenant_id, name, {"version": gov.version}, gov.document_json
        )
    return out


def pretty_document(document_json: str) -> str:
    """A canonical policy document pretty-printed, one key per line, for diffs."""
    try:
        return json.dumps(json.loads(document_json), indent=2, sort_keys=True) + "\n"
    except ValueError:
        return document_json + "\n"


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class ObjectChange:
    kind: str
    id: str
    name: str
    change: str
    fields: tuple[FieldChange, ...] = ()
    document_diff: str = ""


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _field_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[FieldChange, ...]:
    changes = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a != b:
            changes.append(FieldChange(name, "" if a is None else _json(a), "" if b is None else _json(b)))
    return tuple(changes)


def _document_diff(old: str, new: str, from_version: int, to_version: int) -> str:
    if old == new:
        return ""
    lines = difflib.unified_diff(
        pretty_document(old).splitlines(keepends=True) if old else [],
        pretty_document(new).splitlines(keepends=True) if new else [],
        fromfile=f"v{from_version}",
        tofile=f"v{to_version}",
    )
    return "".join(lines)


@dataclass(slots=True)
class Diff:
    from_version: int
    to_version: int
    changes: list[ObjectChange] = field(default_factory=list)


def diff(old: snapshot_pb2.Snapshot, new: snapshot_pb2.Snapshot) -> Diff:
    """Per object: added, removed or changed (which fields, old -> new; policies and
    governance profiles also a unified diff of their documents), in kind order, then by name."""
    a, b = views(old), views(new)
    result = Diff(old.version, new.version)
    for key in sorted(a.keys() | b.keys(), key=lambda k: (KINDS.index(k[0]), (b.get(k) or a[k]).name, k[1])):
        before, after = a.get(key), b.get(key)
        if before is None and after is not None:
            doc = _document_diff("", after.document, old.version, new.version)
            result.changes.append(
                ObjectChange(after.kind, after.id, after.name, "added", _field_changes({}, after.fields), doc)
            )
        elif after is None and before is not None:
            doc = _document_diff(before.document, "", old.version, new.version)
            result.changes.append(
                ObjectChange(
                    before.kind, before.id, before.name, "removed", _field_changes(before.fields, {}), doc
                )
            )
        elif before is not None and after is not None:
            fields = _field_changes(before.fields, after.fields)
            doc = _document_diff(before.document, after.document, old.version, new.version)
            if fields or doc:
                result.changes.append(ObjectChange(after.kind, after.id, after.name, "changed", fields, doc))
    return result
