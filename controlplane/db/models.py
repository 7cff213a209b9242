"""SQLAlchemy 2.0 typed models: the control plane's system of record.

Constraint names follow one convention (``controlplane.db.base``) so Alembic migrations are
stable and the drift test (models vs. migrations) stays meaningful. The evidence store's
models live in ``controlplane.db.evidence_models`` and are re-exported here, so this module's
import registers every table with ``Base.metadata``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controlplane.db.base import NAMING_CONVENTION as NAMING_CONVENTION
from controlplane.db.base import Base as Base
from controlplane.db.base import TimestampMixin as TimestampMixin
from controlplane.db.base import server_now
from controlplane.db.evidence_models import CHAIN_ID_CHARS as CHAIN_ID_CHARS
from controlplane.db.evidence_models import EVIDENCE_PARTITION_PREFIX as EVIDENCE_PARTITION_PREFIX
from controlplane.db.evidence_models import EvidenceAlarm as EvidenceAlarm
from controlplane.db.evidence_models import EvidenceChain as EvidenceChain
from controlplane.db.evidence_models import EvidenceCheckpoint as EvidenceCheckpoint
from controlplane.db.evidence_models import EvidenceFrontier as EvidenceFrontier
from controlplane.db.evidence_models import EvidencePrunedRange as EvidencePrunedRange
from controlplane.db.evidence_models import EvidenceRecord as EvidenceRecord
from controlplane.db.evidence_models import EvidenceSpend as EvidenceSpend
from controlplane.limits import (
    DEFAULT_GROUP,
    ENV_NAME_CHARS,
    GROUP_NAME_CHARS,
    KEY_ID_CHARS,
    NAME_CHARS,
    NODE_ID_CHARS,
    PREFIX_CHARS,
    PROVIDER_TYPE_CHARS,
    RESULT_CHARS,
    TIER_CHARS,
)

# Widths shared with the Admin API's request check, so the two never drift.
from signalbox.api.config.v1 import snapshot_pb2


class Tenant(TimestampMixin, Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(NAME_CHARS), unique=True)
    tier: Mapped[str] = mapped_column(String(TIER_CHARS), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # ---- evidence settings (spool branch; migration 0013) ----
    evidence_content: Mapped[str] = mapped_column(String(16), default="digest", server_default="digest")
    """``digest`` or ``full`` (``controlplane.services.tenants.EVIDENCE_CONTENT``)."""
    evidence_spool_full: Mapped[str] = mapped_column(
        String(16), default="serve_and_alarm", server_default="serve_and_alarm"
    )
    """``serve_and_alarm`` or ``refuse`` (``controlplane.services.tenants.SPOOL_FULL``)."""
    # ---- limits (limits branch; migration 0018) ----
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    """Rate limits and budgets (``controlplane.services.limits``); None: none."""


class ApiKey(TimestampMixin, Base):
    """An API key of a tenant. Only a digest of the key is kept: ``secret_hmac`` (HMAC-SHA256
    under the sealed hash key, ``controlplane.api_key_hash``) for keys ``sbx_<id>_<secret>``,
    ``secret_sha256`` for keys of the earlier format. Exactly one of them is set."""

    __tablename__ = "api_keys"
    # The snapshot's key order: every publish lists all keys in it (snapshots.rows), and an
    # index scan saves that listing a sort of the whole table.
    __table_args__ = (
        Index("ix_api_keys_created_at_id", "created_at", "id"),
        CheckConstraint("(secret_sha256 IS NULL) <> (secret_hmac IS NULL)", name="one_digest"),
        # ---- hash key versions (key-rotation branch; migration 0022) ----
        CheckConstraint("(secret_hmac IS NULL) = (hash_key_version IS NULL)", name="hmac_has_version"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    prefix: Mapped[str] = mapped_column(String(PREFIX_CHARS))
    secret_sha256: Mapped[bytes | None] = mapped_column(LargeBinary, unique=True)
    secret_hmac: Mapped[bytes | None] = mapped_column(LargeBinary, unique=True)
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # ---- limits (limits branch; migration 0018) ----
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    """Rate limits and budgets of this key (``controlplane.services.limits``); None: none."""
    # ---- hash key versions (key-rotation branch; migration 0022) ----
    hash_key_version: Mapped[int | None] = mapped_column(
        ForeignKey("api_key_hash_key.id", ondelete="RESTRICT"), index=True, nullable=True
    )
    """The version of the hash key ``secret_hmac`` is under; None for keys of the earlier format."""


class Provider(TimestampMixin, Base):
    """An upstream endpoint. Its credential is a reference (env var or file) or sealed to a
    node group's key (``credential_sealed``, a ``SealedSecret`` this control plane cannot
    open), never a value."""

    __tablename__ = "providers"
    __table_args__ = (
        CheckConstraint(
            "(credential_env <> '')::int + (credential_file <> '')::int + (credential_sealed IS NOT NULL)::int <= 1",
            name="credential_single_source",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(NAME_CHARS), unique=True)
    type: Mapped[str] = mapped_column(String(PROVIDER_TYPE_CHARS))
    base_url: Mapped[str] = mapped_column(Text, default="")
    credential_env: Mapped[str] = mapped_column(String(ENV_NAME_CHARS), default="")
    credential_file: Mapped[str] = mapped_column(Text, default="")
    credential_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timeout_ms: Mapped[int] = mapped_column(Integer, default=0)
    location: Mapped[int] = mapped_column(Integer, default=0)
    site: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    region: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    jurisdiction: Mapped[str] = mapped_column(String(NAME_CHARS), default="")


class Model(TimestampMixin, Base):
    """A model in the registry, addressed by callers and policies through its alias."""

    __tablename__ = "models"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    alias: Mapped[str] = mapped_column(String(NAME_CHARS), unique=True)
    capabilities: Mapped[list[Any]] = mapped_column(default=list)
    context_window: Mapped[int] = mapped_column(Integer, default=0)
    max_output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    input_price_nanos_per_mtok: Mapped[int] = mapped_column(BigInteger, default=0)
    output_price_nanos_per_mtok: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_input_price_nanos_per_mtok: Mapped[int] = mapped_column(BigInteger, default=0)
    certified_for: Mapped[list[Any]] = mapped_column(default=list)
    certifications: Mapped[list[Any]] = mapped_column(default=list)
    typical_latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)

    deployments: Mapped[list[Deployment]] = relationship(
        back_populates="model",
        cascade="all, delete-orphan",
        order_by="Deployment.position",
        lazy="selectin",
    )


class Deployment(Base):
    """Where a model is served: a provider and the provider's name for it."""

    __tablename__ = "deployments"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    # RESTRICT: a provider still serving a model cannot disappear underneath it.
    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("providers.id", ondelete="RESTRICT"), index=True
    )
    upstream_model: Mapped[str] = mapped_column(String(NAME_CHARS))
    weight: Mapped[int] = mapped_column(Integer, default=1)
    position: Mapped[int] = mapped_column(Integer, default=0)

    model: Mapped[Model] = relationship(back_populates="deployments")


class Policy(Base):
    """One version of a tenant's policy (tenant_id NULL: the platform default).

    Every version is kept; a deletion is itself a version with ``deleted`` set, so
    history shows who removed a policy and when.
    """

    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("tenant_id", "version", postgresql_nulls_not_distinct=True),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(BigInteger)
    document_json: Mapped[str] = mapped_column(Text)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())
    created_by: Mapped[str] = mapped_column(String(NAME_CHARS), default="")


class GovernanceProfile(Base):
    """One version of a tenant's governance profile (tenant_id NULL: the platform default).

    Versioned as policies are: every version kept, the newest wins, a deletion is a version
    with ``deleted`` set. ``document_json`` is the canonical JSON of a document that compiled
    (``dataplane.governance.profile``) when it was applied.
    """

    __tablename__ = "governance_profiles"
    __table_args__ = (UniqueConstraint("tenant_id", "version", postgresql_nulls_not_distinct=True),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(BigInteger)
    document_json: Mapped[str] = mapped_column(Text)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())
    created_by: Mapped[str] = mapped_column(String(NAME_CHARS), default="")


class AdminToken(TimestampMixin, Base):
    """An admin credential. Only the SHA-256 of the token is kept.

    ``role`` is one of ``controlplane.services.admin.ROLES``: ``platform_admin`` (every call),
    ``tenant_admin`` (one tenant, ``tenant_id``) or ``auditor`` (reads; platform-wide, or one
    tenant's when ``tenant_id`` is set). The authorization table is ``controlplane.api.authz``.
    """

    __tablename__ = "admin_tokens"
    __table_args__ = (
        CheckConstraint("role IN ('platform_admin', 'tenant_admin', 'auditor')", name="role_known"),
        CheckConstraint(
            "(role = 'platform_admin' AND tenant_id IS NULL) OR (role = 'tenant_admin' AND tenant_id IS NOT NULL)"
            " OR role = 'auditor'",
            name="role_tenant",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(NAME_CHARS))
    prefix: Mapped[str] = mapped_column(String(PREFIX_CHARS))
    token_sha256: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    role: Mapped[str] = mapped_column(String(32), default="platform_admin", server_default="platform_admin")
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # ---- admin roles (admin branch; migration 0017) ----
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    created_by: Mapped[str] = mapped_column(String(NAME_CHARS), default="", server_default="")


class SigningKey(TimestampMixin, Base):
    """An Ed25519 snapshot signing key; the private half is AES-GCM encrypted with the KEK."""

    __tablename__ = "signing_keys"
    __table_args__ = (CheckConstraint("state IN ('active', 'retiring', 'revoked')", name="state_known"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    key_id: Mapped[str] = mapped_column(String(KEY_ID_CHARS), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    encrypted_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    # Fingerprint of the KEK that sealed the key, so a wrong KEK fails with a clear message.
    kek_id: Mapped[str] = mapped_column(String(KEY_ID_CHARS))
    # active: signs and is the newest; retiring: still signs beside the active one while
    # nodes learn it; revoked: never signs again, and snapshots tell nodes to drop it.
    state: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TrustStatement(Base):
    """A signed statement of every signing key and its state, made at each rotation and
    revocation (the ``TrustStatement`` envelope bytes). Every snapshot carries the newest
    ones as its trust chain, so a node that missed a rotation, or an air-gapped site handed
    a newer pin, learns the new key from keys it already trusts."""

    __tablename__ = "trust_statements"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(Text, default="")


class NodeGroup(TimestampMixin, Base):
    """A group of nodes: where they run and what they may see. One snapshot chain each.

    ``tenants``, ``providers`` and ``models`` are lists of ids or names (aliases for
    models); NULL means everything.
    """

    __tablename__ = "node_groups"
    __table_args__ = (
        CheckConstraint("mode IN ('cloud', 'on-prem', 'air-gapped')", name="mode_known"),
        CheckConstraint("name ~ '^[a-z0-9-]{1,63}$'", name="name_syntax"),
    )

    name: Mapped[str] = mapped_column(String(GROUP_NAME_CHARS), primary_key=True)
    sealing_public_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The X25519 public key provider credentials are sealed to for this group's nodes."""
    mode: Mapped[str] = mapped_column(String(16))
    site: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    deployment: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    tenants: Mapped[list[Any] | None] = mapped_column(JSONB)
    providers: Mapped[list[Any] | None] = mapped_column(JSONB)
    models: Mapped[list[Any] | None] = mapped_column(JSONB)


class Snapshot(Base):
    """A signed snapshot exactly as it was pushed: the envelope bytes.

    The payload is stored once, inside the envelope (``payload``, derived): the
    exact bytes that were hashed and signed.
    """

    __tablename__ = "snapshots"

    # Each group has its own version chain (no foreign key: a deleted group's history,
    # exported pins included, stays readable, and a group re-created under that name
    # continues the chain, so its nodes' rollback protection still holds).
    node_group: Mapped[str] = mapped_column(
        String(GROUP_NAME_CHARS), primary_key=True, server_default=DEFAULT_GROUP
    )
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    previous_hash: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    signing_key_id: Mapped[str] = mapped_column(String(KEY_ID_CHARS))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    # Set when the envelope left as an air-gapped pin: retention keeps it for good.
    exported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The SnapshotDelta from the group's previous version (None: the first, or not known
    # when it was published): what a node running that version is sent instead.
    delta: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)

    @property
    def payload(self) -> bytes:
        """The exact signed payload bytes, read from the envelope."""
        envelope = snapshot_pb2.SignedEnvelope()
        envelope.ParseFromString(bytes(self.envelope))
        return envelope.payload


class Node(Base):
    """A data-plane node as last seen by a control plane replica."""

    __tablename__ = "nodes"

    node_id: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    node_group: Mapped[str] = mapped_column(String(GROUP_NAME_CHARS), server_default=DEFAULT_GROUP)
    software_version: Mapped[str] = mapped_column(String(100), default="")
    mode: Mapped[int] = mapped_column(Integer, default=0, index=True)
    """Indexed (migration 0026): ExplainRoute asks for the mode the whole fleet declares."""
    scope: Mapped[dict[str, Any]] = mapped_column(default=dict)
    applied_version: Mapped[int] = mapped_column(BigInteger, default=0)
    applied_hash: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    last_ack_version: Mapped[int] = mapped_column(BigInteger, default=0)
    last_ack_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_nack_version: Mapped[int] = mapped_column(BigInteger, default=0)
    last_nack_hash: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    last_nack_reason: Mapped[str] = mapped_column(Text, default="")
    last_nack_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    connected: Mapped[bool] = mapped_column(Boolean, default=False)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())


class AuditEntry(Base):
    """One admin call: who made it, what it touched, how it ended. Append-only in the
    database (migration 0017: grants and triggers refuse UPDATE, DELETE and TRUNCATE)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now(), index=True)
    actor: Mapped[str] = mapped_column(String(NAME_CHARS))
    method: Mapped[str] = mapped_column(String(NAME_CHARS))
    target: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[str] = mapped_column(String(RESULT_CHARS))
    detail: Mapped[str] = mapped_column(Text, default="")
    # ---- admin audit trail (admin branch; migration 0017) ----
    actor_role: Mapped[str] = mapped_column(String(32), default="", server_default="")
    actor_tenant: Mapped[str] = mapped_column(String(64), default="", server_default="")
    """The tenant id an actor of a tenant-scoped role is bound to; "" for platform roles."""
    tenant: Mapped[str] = mapped_column(String(64), default="", server_default="", index=True)
    """The tenant id the call was about, when it names one (or an object of one)."""
    before_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    after_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    """Hex SHA-256 of the target's canonical form before and after a change ("": none)."""


class NodeNack(Base):
    """Every snapshot a node refused, so that exact snapshot is never sent to it again."""

    __tablename__ = "node_nacks"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.node_id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())


class NodeCa(Base):
    """The node CA that issues node certificates; one row, shared by every replica.

    The private key is sealed with the KEK like the signing keys (key id ``node-ca`` as
    associated data)."""

    __tablename__ = "node_ca"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    certificate_pem: Mapped[str] = mapped_column(Text)
    encrypted_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    kek_id: Mapped[str] = mapped_column(String(KEY_ID_CHARS))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())


class ApiKeyHashKey(Base):
    """A version of the key API keys are hashed with (HMAC-SHA256), sealed with the KEK
    (``controlplane.api_key_hash``). ``id`` is the version; the newest one not retired is
    active. A retired version's key is destroyed (``sealed_key`` NULL)."""

    __tablename__ = "api_key_hash_key"
    __table_args__ = (
        CheckConstraint("id >= 1", name="version_positive"),
        CheckConstraint("(sealed_key IS NULL) = (retired_at IS NOT NULL)", name="retired_forgotten"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sealed_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    kek_id: Mapped[str] = mapped_column(String(KEY_ID_CHARS))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())
    # ---- hash key versions (key-rotation branch; migration 0022) ----
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EnrollToken(Base):
    """A one-time bootstrap token for a node group. Only the SHA-256 of the whole token is kept."""

    __tablename__ = "enroll_tokens"

    id: Mapped[str] = mapped_column(String(KEY_ID_CHARS), primary_key=True)
    secret_sha256: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    node_group: Mapped[str] = mapped_column(String(NAME_CHARS))
    mode: Mapped[str] = mapped_column(String(16), default="")
    site: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())
    created_by: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    used_by: Mapped[str | None] = mapped_column(String(NODE_ID_CHARS))


class NodeCertificate(Base):
    """Every certificate the node CA issued; the serial is what sync looks up."""

    __tablename__ = "node_certificates"

    serial: Mapped[str] = mapped_column(String(KEY_ID_CHARS), primary_key=True)
    """Hex of the certificate's serial number."""
    node_id: Mapped[str] = mapped_column(String(NODE_ID_CHARS), index=True)
    node_group: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    mode: Mapped[str] = mapped_column(String(16), default="")
    site: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sha256: Mapped[bytes] = mapped_column(LargeBinary)
    """Fingerprint of the DER certificate."""
    certificate_pem: Mapped[str] = mapped_column(Text, default="", server_default="")
    """The certificate itself (evidence packs carry it); empty when issued before 0015."""
    token_id: Mapped[str] = mapped_column(String(KEY_ID_CHARS), default="")
    """The enrollment token it was issued for ("" for a renewal)."""
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic's filter: partitions of ``evidence_records`` are made at run time (and
    inherit the parent's indexes), not by a model; comparing them would always drift."""
    return not (
        type_ == "table"
        and reflected
        and compare_to is None
        and (name or "").startswith(EVIDENCE_PARTITION_PREFIX)
    )


# ---- caller identities (ident branch) ----


class TenantIdentity(TimestampMixin, Base):
    """A way a tenant's callers authenticate besides API keys: a JWT issuer (``kind`` jwt,
    ``match`` its ``iss``) or an mTLS URI SAN mapping (``kind`` mtls, ``match`` the URI,
    ``prefix``). ``spec`` is the snapshot message (``JwtIssuer`` / ``MtlsMapping``) encoded
    deterministically: public keys and claim names only, never a secret."""

    __tablename__ = "tenant_identities"
    __table_args__ = (
        UniqueConstraint("kind", "match", "prefix", name="uq_tenant_identities_kind"),
        CheckConstraint("kind IN ('jwt', 'mtls')", name="kind_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    match: Mapped[str] = mapped_column(Text)
    prefix: Mapped[bool] = mapped_column(Boolean, default=False)
    spec: Mapped[bytes] = mapped_column(LargeBinary)


# ---- limits (limits branch) ----


class QuotaState(Base):
    """What the control plane has handed out for one limit (``scope``: tenant id, key id or
    empty, kind) in one window: for a rate, the level of its token bucket (``window`` empty);
    for a budget, the nano-USD leased in a UTC day or month (``window`` "2026-11-30",
    "2026-11"), net of what nodes handed back. Rows are locked while a lease is computed, so
    control-plane replicas never hand out the same quota twice (``controlplane.quota``)."""

    __tablename__ = "quota_state"

    scope: Mapped[str] = mapped_column(String(96), primary_key=True)
    window: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    level: Mapped[float] = mapped_column(Float, default=0.0)
    used: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())
    holders: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    """A rate: holder -> when it last leased it (epoch seconds): who shares its refill. A
    budget: holder -> [its count in the window (granted less handed back, plus overspent),
    when it last leased it], the counts summing to ``used`` (less, for a row from before migration 0029: the rest is no known
    holder's), weighed against the holder's evidence (``controlplane.evidence.spend``)."""


# ---- admin identities by mTLS (admin branch; migration 0017) ----


class AdminMtlsIdentity(TimestampMixin, Base):
    """An admin identity given by a client certificate: the certificate's URI SAN, exactly,
    maps to a name, a role and (for tenant-scoped roles) a tenant."""

    __tablename__ = "admin_mtls_identities"
    __table_args__ = (
        CheckConstraint("role IN ('platform_admin', 'tenant_admin', 'auditor')", name="role_known"),
        CheckConstraint(
            "(role = 'platform_admin' AND tenant_id IS NULL) OR (role = 'tenant_admin' AND tenant_id IS NOT NULL)"
            " OR role = 'auditor'",
            name="role_tenant",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    uri: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(String(NAME_CHARS))
    role: Mapped[str] = mapped_column(String(32))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
