"""Turn a snapshot payload into the ``RuntimeConfig`` a node serves from.

This is the single place where snapshot protobuf becomes data-plane values. The
control plane runs the same function before it signs, so nothing it signs can
fail to compile on a node. Every problem is reported with the path of the
offending entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

from google.protobuf.message import DecodeError

from dataplane.config.identity import NO_IDENTITIES, IdentityIndex
from dataplane.config.model import (
    ApiKeyEntry,
    Capability,
    CompiledPolicy,
    CompiledProfile,
    DataClass,
    DeploymentConfig,
    DeploymentMode,
    LimitsConfig,
    ModelConfig,
    ProviderConfig,
    ProviderLocation,
    RuntimeConfig,
    Scope,
    SealedRef,
    SecretRef,
    TenantConfig,
)
from dataplane.errors import PolicyError, ProfileError, SnapshotInvalid, shown
from dataplane.governance.profile import compile_profile
from dataplane.policy.compiler import ModelIndex, compile_policy
from dataplane.providers.registry import adapter_types
from dataplane.scopes import KeyScope
from dataplane.snapshot.identities import compile_identities
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2

CAPABILITY_FROM_PROTO: dict[int, Capability] = {
    common_pb2.CAPABILITY_CHAT: Capability.CHAT,
    common_pb2.CAPABILITY_TOOLS: Capability.TOOLS,
    common_pb2.CAPABILITY_VISION: Capability.VISION,
    common_pb2.CAPABILITY_JSON_MODE: Capability.JSON_MODE,
    common_pb2.CAPABILITY_JSON_SCHEMA: Capability.JSON_SCHEMA,
    common_pb2.CAPABILITY_STREAMING: Capability.STREAMING,
    common_pb2.CAPABILITY_EMBEDDINGS: Capability.EMBEDDINGS,
}

MODE_FROM_PROTO: dict[int, DeploymentMode] = {
    common_pb2.DEPLOYMENT_MODE_CLOUD: DeploymentMode.CLOUD,
    common_pb2.DEPLOYMENT_MODE_ON_PREM: DeploymentMode.ON_PREM,
    common_pb2.DEPLOYMENT_MODE_AIR_GAPPED: DeploymentMode.AIR_GAPPED,
}
"""Declared deployment modes; UNSPECIFIED is absent (it declares nothing)."""
MODE_TO_PROTO: dict[DeploymentMode, common_pb2.DeploymentMode.ValueType] = {
    DeploymentMode.CLOUD: common_pb2.DEPLOYMENT_MODE_CLOUD,
    DeploymentMode.ON_PREM: common_pb2.DEPLOYMENT_MODE_ON_PREM,
    DeploymentMode.AIR_GAPPED: common_pb2.DEPLOYMENT_MODE_AIR_GAPPED,
}

LOCATION_FROM_PROTO: dict[int, ProviderLocation] = {
    snapshot_pb2.PROVIDER_LOCATION_UNSPECIFIED: ProviderLocation.PUBLIC_CLOUD,
    snapshot_pb2.PROVIDER_LOCATION_PUBLIC_CLOUD: ProviderLocation.PUBLIC_CLOUD,
    snapshot_pb2.PROVIDER_LOCATION_ON_PREM: ProviderLocation.ON_PREM,
    snapshot_pb2.PROVIDER_LOCATION_SITE: ProviderLocation.SITE,
}


def decode_snapshot(payload: bytes) -> snapshot_pb2.Snapshot:
    snapshot = snapshot_pb2.Snapshot()
    try:
        snapshot.ParseFromString(payload)
    except DecodeError as exc:
        raise SnapshotInvalid("$", f"payload is not a Snapshot message: {exc}") from exc
    return snapshot


def compile_payload(payload: bytes) -> RuntimeConfig:
    """Decode and compile the exact signed payload bytes."""
    return compile_snapshot(decode_snapshot(payload), hashlib.sha256(payload).digest())


def compile_snapshot(snapshot: snapshot_pb2.Snapshot, payload_sha256: bytes) -> RuntimeConfig:
    """Check referential integrity and compile; raise ``SnapshotInvalid`` on the first problem."""
    check_header(snapshot)
    tenants: dict[str, TenantConfig] = {}
    for i, t in enumerate(snapshot.tenants):
        entry = tenant_entry(i, t)
        if t.id in tenants:
            raise SnapshotInvalid(f"$.tenants[{i}].id", f"duplicate tenant {t.id!r}")
        tenants[t.id] = entry

    keys: dict[bytes, ApiKeyEntry] = {}
    # Keys share a handful of scope sets: each set is parsed once per compile (KeyScope is
    # immutable, so keys may share one), not once per key: at 50,000 keys parsing every
    # key's scopes was a quarter of the compile.
    parsed: dict[frozenset[str], KeyScope] = {}
    for i, k in enumerate(snapshot.api_keys):
        secret, key = key_entry(i, k, tenants, parsed)
        keys[secret] = key

    providers, models, policies = compile_registry(snapshot, tenants)
    identities = compile_identities(snapshot.identities, tenants)
    governance = compile_governance(snapshot.governance_profiles, tenants)
    return runtime_config(
        snapshot, payload_sha256, tenants, keys, providers, models, policies, identities, governance
    )


MAX_VERSION = 2**63 - 1
"""The highest version a snapshot may carry: the control plane keeps versions (and what each
node runs) in bigint columns. A node that took a higher one would refuse every later snapshot
as a rollback, and the control plane every Hello naming it: a node lost for good."""


def check_header(snapshot: snapshot_pb2.Snapshot) -> None:
    if snapshot.version <= 0:
        raise SnapshotInvalid("$.version", "must be positive")
    if snapshot.version > MAX_VERSION:
        raise SnapshotInvalid("$.version", f"at most {MAX_VERSION} (got {snapshot.version})")


def runtime_config(
    header: snapshot_pb2.Snapshot,
    payload_sha256: bytes,
    tenants: Mapping[str, TenantConfig],
    keys: Mapping[bytes, ApiKeyEntry],
    providers: Mapping[str, ProviderConfig],
    models: Mapping[str, ModelConfig],
    policies: Mapping[str, CompiledPolicy],
    identities: IdentityIndex = NO_IDENTITIES,
    governance: Mapping[str, CompiledProfile] | None = None,
) -> RuntimeConfig:
    """The compiled config: ``header``'s fields 1-5 with the compiled sections."""
    return RuntimeConfig(
        version=header.version,
        payload_sha256=payload_sha256,
        created_at=header.created_at.ToSeconds() if header.HasField("created_at") else 0.0,
        expires_at=header.expires_at.ToSeconds() if header.HasField("expires_at") else None,
        scope=Scope(header.scope.deployment, header.scope.node_group, header.scope.site),
        tenants=tenants,
        api_keys=keys,
        providers=providers,
        models=models,
        policies=policies,
        identities=identities,
        governance=governance or {},
    )


def tenant_entry(i: int, t: snapshot_pb2.Tenant) -> TenantConfig:
    """Tenant ``i`` compiled (its id's uniqueness is the caller's check)."""
    if not t.id:
        raise SnapshotInvalid(f"$.tenants[{i}].id", "must not be empty")
    content, spool_full = t.evidence.content, t.evidence.spool_full
    if content not in (snapshot_pb2.EVIDENCE_CONTENT_DIGEST, snapshot_pb2.EVIDENCE_CONTENT_FULL):
        raise SnapshotInvalid(f"$.tenants[{i}].evidence.content", f"unknown value {int(content)}")
    if spool_full not in (snapshot_pb2.SPOOL_FULL_SERVE_AND_ALARM, snapshot_pb2.SPOOL_FULL_REFUSE):
        raise SnapshotInvalid(f"$.tenants[{i}].evidence.spool_full", f"unknown value {int(spool_full)}")
    return TenantConfig(
        t.id,
        t.name,
        t.tier,
        t.active,
        dict(t.labels),
        evidence_full=content == snapshot_pb2.EVIDENCE_CONTENT_FULL,
        spool_refuse=spool_full == snapshot_pb2.SPOOL_FULL_REFUSE,
        limits=limits_entry(f"$.tenants[{i}].limits", t.limits) if t.HasField("limits") else None,
    )


def limits_entry(path: str, limits: snapshot_pb2.Limits) -> LimitsConfig | None:
    """A ``Limits`` message compiled (None when it limits nothing and fails open)."""
    if limits.on_unreachable not in (
        snapshot_pb2.ON_UNREACHABLE_FAIL_OPEN,
        snapshot_pb2.ON_UNREACHABLE_FAIL_CLOSED,
    ):
        raise SnapshotInvalid(f"{path}.on_unreachable", f"unknown value {int(limits.on_unreachable)}")
    entry = LimitsConfig(
        limits.requests_per_minute,
        limits.tokens_per_minute,
        limits.budget_day_nanos,
        limits.budget_month_nanos,
        limits.on_unreachable == snapshot_pb2.ON_UNREACHABLE_FAIL_CLOSED,
    )
    return entry if entry != LimitsConfig() else None


def key_entry(
    i: int,
    k: snapshot_pb2.ApiKey,
    tenants: Mapping[str, TenantConfig],
    parsed: dict[frozenset[str], KeyScope],
) -> tuple[bytes, ApiKeyEntry]:
    """API key ``i`` compiled, keyed by its digest; ``parsed`` caches scope sets."""
    if k.tenant_id not in tenants:
        raise SnapshotInvalid(f"$.api_keys[{i}].tenant_id", f"unknown tenant {k.tenant_id!r}")
    digest = key_digest(k)
    if digest is None:
        if k.secret_sha256 and k.secret_hmac:
            raise SnapshotInvalid(
                f"$.api_keys[{i}]", "must have one of secret_sha256 and secret_hmac, not both"
            )
        field = "secret_hmac" if k.secret_hmac else "secret_sha256"
        raise SnapshotInvalid(f"$.api_keys[{i}].{field}", "must be a 32-byte digest")
    expires = k.expires_at.ToSeconds() if k.HasField("expires_at") else None
    # A scope this node does not understand refuses that key's requests (KeyScope.invalid);
    # it does not make the whole snapshot unservable.
    scopes = frozenset(k.scopes)
    scope = parsed.get(scopes)
    if scope is None:
        scope = parsed[scopes] = KeyScope.parse(scopes)
    limits = limits_entry(f"$.api_keys[{i}].limits", k.limits) if k.HasField("limits") else None
    return digest, ApiKeyEntry(k.id, k.tenant_id, k.name, scopes, expires, scope, limits)


def key_digest(k: snapshot_pb2.ApiKey) -> bytes | None:
    """What the key is looked up by: its HMAC digest or (earlier format) its SHA-256; None
    when it has neither or both, or a digest of the wrong size."""
    if k.secret_hmac and k.secret_sha256:
        return None
    digest = bytes(k.secret_hmac or k.secret_sha256)
    return digest if len(digest) == 32 else None


def compile_registry(
    snapshot: snapshot_pb2.Snapshot, tenants: Mapping[str, TenantConfig]
) -> tuple[dict[str, ProviderConfig], dict[str, ModelConfig], dict[str, CompiledPolicy]]:
    """Providers, models and policies (which must name known tenants) of ``snapshot``."""
    known_types = adapter_types()
    providers: dict[str, ProviderConfig] = {}
    for i, p in enumerate(snapshot.providers):
        if not p.id:
            raise SnapshotInvalid(f"$.providers[{i}].id", "must not be empty")
        if p.id in providers:
            # Else the last one would silently win, and models would call a provider the
            # snapshot's reader cannot tell from its twin.
            raise SnapshotInvalid(f"$.providers[{i}].id", f"duplicate provider {p.id!r}")
        if p.type not in known_types:
            raise SnapshotInvalid(
                f"$.providers[{i}].type",
                f"unknown provider type {p.type!r} (known: {', '.join(sorted(known_types))})",
            )
        sealed = None
        if p.credential.HasField("sealed"):
            s = p.credential.sealed
            sealed = SealedRef(s.node_group, s.key_id, bytes(s.ciphertext), p.id, snapshot.scope.node_group)
        credential = SecretRef(env=p.credential.env, file=p.credential.file, sealed=sealed)
        providers[p.id] = ProviderConfig(
            id=p.id,
            name=p.name,
            type=p.type,
            base_url=p.base_url,
            credential=credential,
            settings=dict(p.settings),
            timeout_s=(p.timeout_ms or 60_000) / 1000,
            location=LOCATION_FROM_PROTO.get(p.location, ProviderLocation.PUBLIC_CLOUD),
            site=p.site,
            region=p.region,
            jurisdiction=p.jurisdiction,
        )

    models: dict[str, ModelConfig] = {}
    for i, m in enumerate(snapshot.models):
        if not m.alias:
            raise SnapshotInvalid(f"$.models[{i}].alias", "must not be empty")
        if m.alias in models:
            raise SnapshotInvalid(f"$.models[{i}].alias", f"duplicate model {m.alias!r}")
        deployments = []
        for j, d in enumerate(m.deployments):
            if d.provider_id not in providers:
                raise SnapshotInvalid(
                    f"$.models[{i}].deployments[{j}].provider_id", f"unknown provider {d.provider_id!r}"
                )
            deployments.append(DeploymentConfig(d.id, d.provider_id, d.upstream_model, d.weight or 1))
        if not deployments:
            raise SnapshotInvalid(f"$.models[{i}].deployments", f"model {m.alias!r} has no deployment")
        models[m.alias] = ModelConfig(
            id=m.id,
            alias=m.alias,
            capabilities=frozenset(
                CAPABILITY_FROM_PROTO[c] for c in m.capabilities if c in CAPABILITY_FROM_PROTO
            ),
            context_window=m.context_window,
            max_output_tokens=m.max_output_tokens,
            input_price_nanos_per_mtok=m.input_price_nanos_per_mtok,
            output_price_nanos_per_mtok=m.output_price_nanos_per_mtok,
            cached_input_price_nanos_per_mtok=m.cached_input_price_nanos_per_mtok,
            deployments=tuple(deployments),
            certified_for=frozenset(
                DataClass(c) for c in m.certified_for if c in DataClass._value2member_map_
            ),
            certifications=frozenset(m.certifications),
            typical_latency_ms=m.typical_latency_ms,
            attributes=dict(m.attributes),
        )

    # One index per snapshot, shared by every policy in it: selecting by capability
    # is then a set intersection, and the index lives exactly as long as this registry
    # (not in a module-level cache that would outlive it or race another compile).
    index = ModelIndex(models)
    policies: dict[str, CompiledPolicy] = {}
    for i, pol in enumerate(snapshot.policies):
        if pol.tenant_id and pol.tenant_id not in tenants:
            raise SnapshotInvalid(f"$.policies[{i}].tenant_id", f"unknown tenant {pol.tenant_id!r}")
        if pol.tenant_id in policies:
            raise SnapshotInvalid(f"$.policies[{i}].tenant_id", "more than one policy for this tenant")
        try:
            document = json.loads(pol.document_json)
        except ValueError as exc:
            raise SnapshotInvalid(f"$.policies[{i}].document_json", f"not JSON: {exc}") from exc
        except RecursionError as exc:  # json's only depth limit is the stack's: not a ValueError
            raise SnapshotInvalid(f"$.policies[{i}].document_json", "not JSON: nested too deep") from exc
        try:
            policies[pol.tenant_id] = compile_policy(
                document,
                models,
                policy_id=pol.id,
                tenant_id=pol.tenant_id,
                version=pol.version,
                index=index,
            )
        except PolicyError as exc:
            raise SnapshotInvalid(f"$.policies[{i}].document{exc.path[1:]}", exc.problem) from exc

    return providers, models, policies


# ---- governance (issue 10) ----


def compile_governance(
    profiles: Iterable[snapshot_pb2.GovernanceProfile], tenants: Mapping[str, TenantConfig]
) -> dict[str, CompiledProfile]:
    """Governance profiles keyed by tenant id (``""``: the platform default), each compiled
    with its detectors built; at most one per tenant, each naming a known tenant."""
    compiled: dict[str, CompiledProfile] = {}
    for i, g in enumerate(profiles):
        path = f"$.governance_profiles[{i}]"
        if g.tenant_id and g.tenant_id not in tenants:
            raise SnapshotInvalid(f"{path}.tenant_id", f"unknown tenant {shown(g.tenant_id)}")
        if g.tenant_id in compiled:
            whose = f"tenant {shown(g.tenant_id)}" if g.tenant_id else "the platform default"
            raise SnapshotInvalid(f"{path}.tenant_id", f"more than one governance profile for {whose}")
        try:
            document = json.loads(g.document_json)
        except (ValueError, RecursionError) as exc:
            raise SnapshotInvalid(f"{path}.document_json", f"not JSON: {exc}") from exc
        try:
            compiled[g.tenant_id] = compile_profile(document, version=g.version, profile_id=g.id)
        except ProfileError as exc:
            raise SnapshotInvalid(f"{path}.document{exc.path[1:]}", exc.problem) from exc
    return compiled


# ---- governance (end) ----
