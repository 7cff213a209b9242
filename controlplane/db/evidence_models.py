"""The evidence store's models (migrations 0012, 0014, 0020, 0023, 0027, 0028): records, chains,
alarms, checkpoints, compact ranges, pruned ranges and the spend budgets are tracked by. Append-only where the
migrations say so."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from controlplane.db.base import Base, server_now
from controlplane.limits import (
    KEY_ID_CHARS,
    NAME_CHARS,
    NODE_ID_CHARS,
    RESULT_CHARS,
)

# --- Evidence store (migration 0012) -------------------------------------------------------
# Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE on records, alarms and
# checkpoints (and DELETE, or a head that moves back, on chains); see the migration. The one
# DELETE let through is retention's of checkpoints and compact ranges a pruned range
# superseded (``evidence_prune_superseded``, migration 0028).

CHAIN_ID_CHARS = NODE_ID_CHARS + 44
"""``<node_id>/<worker>``."""
EVIDENCE_PARTITION_PREFIX = "evidence_records_"
"""Partitions of ``evidence_records`` (monthly ``_yYYYYmMM`` and ``_default``): tables of the
database that no model declares."""


class EvidenceRecord(Base):
    """One shipped evidence record, as received, with the fields queries filter on.

    Partitioned by ``ts`` (monthly, plus a DEFAULT partition). The primary key must hold the
    partition key, so it is (chain_id, seq, ts); (chain_id, seq) is unique because ingest only
    ever inserts ``head + 1`` under the chain's row lock (``evidence_chains``)."""

    __tablename__ = "evidence_records"
    __table_args__ = (
        # Hash: only ever looked up by equality, and cheaper to insert into (migration 0023).
        Index("ix_evidence_records_correlation_id", "correlation_id", postgresql_using="hash"),
        Index("ix_evidence_records_tenant_ts", "tenant_id", "ts"),
        Index("ix_evidence_records_api_key_ts", "api_key_id", "ts"),
        Index("ix_evidence_records_model_ts", "model", "ts"),
        # Refusals only: served records (almost all) are read by time (migration 0023).
        Index("ix_evidence_records_refused_ts", "outcome", "ts", postgresql_where=text("outcome <> 'OK'")),
        Index("ix_evidence_records_ts", "ts"),
        # Retention asks whether a month holds recent receipts (migration 0025).
        Index("ix_evidence_records_received_at", "received_at", postgresql_using="brin"),
        {"postgresql_partition_by": "RANGE (ts)"},
    )

    chain_id: Mapped[str] = mapped_column(String(CHAIN_ID_CHARS), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    """The record's own time (its ``ts``), the partition key; its receipt instead when it is
    dated more than a day after it (``controlplane.evidence.records.MAX_AHEAD_S``)."""
    record_id: Mapped[str] = mapped_column(String(KEY_ID_CHARS))
    hash: Mapped[bytes] = mapped_column(LargeBinary)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary)
    node_id: Mapped[str] = mapped_column(String(NODE_ID_CHARS))
    correlation_id: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    tenant_id: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    api_key_id: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    model: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    outcome: Mapped[str] = mapped_column(String(RESULT_CHARS), default="")
    body: Mapped[bytes] = mapped_column(LargeBinary)
    """The JSONL line exactly as the node wrote it (its hash verifies against these bytes)."""
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())


class EvidenceChain(Base):
    """Per chain: how far it is stored (gap-free) and whether it is in alarm."""

    __tablename__ = "evidence_chains"

    chain_id: Mapped[str] = mapped_column(String(CHAIN_ID_CHARS), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(NODE_ID_CHARS), index=True)
    head_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    """Highest seq stored with every seq before it."""
    head_hash: Mapped[bytes] = mapped_column(LargeBinary)
    tree: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    """The Merkle tree of records 1..head_seq as its perfect-subtree roots (``controlplane.evidence.tree``),
    so a checkpoint's root is checked without reading the chain back."""
    last_received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(RESULT_CHARS), default="ok")
    """``ok``, ``gap`` (waiting for the node to resend) or ``tampered`` (stays until an admin looks)."""
    alarm: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())


class EvidenceAlarm(Base):
    """A tamper alarm, gap or chain break: digests and ids only, never record content."""

    __tablename__ = "evidence_alarms"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    chain_id: Mapped[str] = mapped_column(String(CHAIN_ID_CHARS), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(RESULT_CHARS))
    """``tamper``, ``gap``, ``chain_break``, ``checkpoint_mismatch``."""
    expected: Mapped[str] = mapped_column(Text, default="")
    arrived: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())


class EvidenceCheckpoint(Base):
    """A checkpoint note a node shipped, as received, once records 1..size were stored;
    ``root_matches`` false is a tamper alarm (the records do not make that root)."""

    __tablename__ = "evidence_checkpoints"
    __table_args__ = (Index("ix_evidence_checkpoints_chain_id_tree_size", "chain_id", "tree_size"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    chain_id: Mapped[str] = mapped_column(String(CHAIN_ID_CHARS))
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary)
    note: Mapped[str] = mapped_column(Text)
    root_matches: Mapped[bool] = mapped_column(Boolean)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())
    frontier: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """The compact range of records 1..tree_size (``controlplane.evidence.tree``) when the root
    matched, from which an export proves later records (migration 0024); NULL before it."""


class EvidenceFrontier(Base):
    """The compact range of a chain's records 1..tree_size (``controlplane.evidence.tree``),
    stored by ingest at every ``tree.FRONTIER_EVERY``-th record (migration 0027): a checkpoint
    of a size that is not in its batch is checked from the nearest one before it, reading at
    most that many leaf hashes, not every one from the chain's start. Append-only."""

    __tablename__ = "evidence_frontiers"

    chain_id: Mapped[str] = mapped_column(String(CHAIN_ID_CHARS), primary_key=True)
    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    frontier: Mapped[bytes] = mapped_column(LargeBinary)


class EvidencePrunedRange(Base):
    """A signed statement of records removed from a chain by retention (migration 0014):
    ``first_seq..last_seq`` left with their partitions; ``statement`` is the DSSE envelope
    (``controlplane.evidence.retention``) that says so, with the Merkle compact range of
    records 1..last_seq. Append-only like the other evidence tables."""

    __tablename__ = "evidence_pruned_ranges"
    __table_args__ = (Index("ix_evidence_pruned_ranges_chain_id_last_seq", "chain_id", "last_seq"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    chain_id: Mapped[str] = mapped_column(String(CHAIN_ID_CHARS))
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[bytes] = mapped_column(LargeBinary)
    pruned_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    statement: Mapped[bytes] = mapped_column(LargeBinary)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())


class EvidenceSpend(Base):
    """Nano-USD spent per budget scope (as ``quota_state.scope``) and UTC day or month, as
    shipped evidence records it (their ``cost.total_nanos``): ingest adds each stored
    record once, and the quota ledger never counts a budget as less used than this
    (migration 0020). No foreign key: a record names its tenant and key as the node saw
    them, and a refused batch must never be a constraint error. One row per evidence chain
    (a node worker, the lease holder of the same name; migration 0029): empty, spend of no
    known worker (rows from before)."""

    __tablename__ = "evidence_spend"

    scope: Mapped[str] = mapped_column(String(96), primary_key=True)
    window: Mapped[str] = mapped_column(String(16), primary_key=True)
    chain_id: Mapped[str] = mapped_column(String(300), primary_key=True, server_default=text("''"))
    nanos: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=server_now())
