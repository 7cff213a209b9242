"""Evidence Packs built from the store (format: ``dataplane.evidence.pack``).

``EvidenceExporter.plan`` runs the query once per chain to count what matches and picks each
chain's checkpoint; ``stream`` then writes the pack in pieces of about ``CHUNK_BYTES``
without ever holding it whole: the records' lines come from server-side cursors in seq
order, and a chain's multiproof is hashed from the stored record hashes of seqs 1..N as
they are read (``merkle.MultiproofBuilder``). Both run in one REPEATABLE READ transaction,
so the counts, the statement and the records are of one view of the store even while
ingest keeps committing.

Per chain the store holds, the pack states which range was searched:

- ``to_seq`` = N, the size of the checkpoint the chain's records are proven against: the
  smallest stored checkpoint whose root matched the stored records (``root_matches``) and
  that covers the newest matching record, or else the newest such checkpoint (matches
  after it are not exported, and ``head_seq`` shows they exist unsearched);
- ``from_seq`` = 1, or, for a chain whose oldest records retention pruned, one after the last
  pruned seq L: the chain's pruned-range statements (``controlplane.evidence.retention``,
  signed by the control plane) go into the pack's ``pruned`` section, so what was pruned, and
  when, is stated and signed, never silently missing; the multiproof starts from the newest
  statement's compact range of records 1..L (``merkle.MultiproofBuilder(prefix=...)``). A
  chain whose every covering checkpoint is within its pruned range has nothing left to
  search: ``from_seq`` L + 1, ``to_seq`` L;
- a chain with no match in its range (or no checkpoint yet, N = 0) is listed in the
  manifest's ``searched_without_match``.

A pack asked for by a tenant-bound identity (its query's tenant forced to its own) lists only
the chains holding records of that tenant: no other chain can hold a match, and the rest of
the fleet (other tenants' nodes, their head seqs, states and alarms) is not the tenant's to see.

The certificates section states when each revoked node certificate was revoked (``revoked``),
so the verifier can tell a checkpoint signed before a revocation from one signed after it.

The seal is signed by the control plane's active snapshot signing key only (one signature,
so a verifier holding that key checks every byte of the seal). For the same reason a
checkpoint witnessed by a key rotated out since carries, in the pack, the active key's
cosignature too, with the original witness time (``witnessed_by_active``): the control
plane vouches for what its older key saw, as it does for pruned-range statements.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import SigningKey
from controlplane.errors import InvalidArgument, shown
from controlplane.evidence.errors import ExportImpossible, ExportTooLarge
from controlplane.evidence.queries import EvidenceFilter
from controlplane.evidence.retention import countersigned
from controlplane.evidence.tree import compact_range
from controlplane.keys import Keyring, Signer
from dataplane.evidence import cosignature, merkle
from dataplane.evidence.pack import (
    KIND_CONTROL_PLANE,
    ChainSection,
    PackWriter,
    Searched,
    certificate_sha256,
    sign_ed25519,
)
from dataplane.evidence.pruned import PrunedStatement, decode_statement

MAX_EXPORT_RECORDS = 1_000_000
"""The most records one pack may hold; a query matching more is refused (RESOURCE_EXHAUSTED)."""
CHUNK_BYTES = 1024 * 1024
FETCH_ROWS = 2000
MAX_ALARMS = 1000
"""Newest alarms of the searched chains the manifest lists."""

_FILTERS = ("correlation_id", "tenant_id", "api_key_id", "model", "outcome")


def query_json(query: EvidenceFilter) -> dict[str, str]:
    """The filters exactly as asked (unset ones left out), for the manifest."""
    asked = {name: getattr(query, name) for name in _FILTERS if getattr(query, name)}
    for name in ("since", "until"):
        when: datetime | None = getattr(query, name)
        if when is not None:
            asked[name] = when.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return asked


def _where(query: EvidenceFilter) -> tuple[str, dict[str, Any]]:
    """The SQL condition on ``evidence_records`` and its parameters."""
    clauses, params = ["TRUE"], {}
    for name in _FILTERS:
        if getattr(query, name):
            clauses.append(f"{name} = :{name}")
            params[name] = getattr(query, name)
    for name, op in (("since", ">="), ("until", "<")):
        if getattr(query, name) is not None:
            clauses.append(f"ts {op} :{name}")
            params[name] = getattr(query, name)
    return " AND ".join(clauses), params


@dataclass(slots=True)
class _Chain:
    searched: Searched
    note: str
    pruned: PrunedStatement | None
    """The newest pruned-range statement: the proof starts from its compact range."""


@dataclass(slots=True)
class ExportPlan:
    """What a pack will hold, decided before its first byte is sent."""

    query: EvidenceFilter
    session: AsyncSession
    pack_id: str = field(default_factory=lambda: secrets.token_hex(16))
    chains: list[_Chain] = field(default_factory=list)
    unmatched: list[Searched] = field(default_factory=list)
    pruned: dict[str, list[str]] = field(default_factory=dict)
    """Per listed chain with pruned records, its statements' envelopes, oldest first."""

    @property
    def records(self) -> int:
        return sum(c.searched.records for c in self.chains)


class _Chunks:
    """What ``PackWriter`` writes, handed on in pieces of about ``CHUNK_BYTES``."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self.size += len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts, self.size = [], 0
        return data


class EvidenceExporter:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        node_ca_pem: str,
        *,
        max_records: int = MAX_EXPORT_RECORDS,
    ) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self._node_ca_pem = node_ca_pem
        self._max_records = max_records

    async def export(
        self, query: EvidenceFilter, *, tenant_bound: bool = False
    ) -> AsyncIterator[tuple[ExportPlan | None, bytes]]:
        """The pack for ``query``: first ``(plan, b"")`` once its size is known (refused
        with ``ExportTooLarge`` before anything when too large), then ``(None, piece)``.
        ``tenant_bound``: asked by an identity of ``query.tenant_id``, whose pack lists only
        the chains holding records of that tenant (module docstring)."""
        if query.since is not None and query.until is not None and query.since >= query.until:
            raise InvalidArgument("until", "must be after since")
        async with self._sessions() as session, session.begin():
            # One view of the store for the counts, the statement and the records.
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            plan = await self._plan(session, query, tenant_bound)
            yield plan, b""
            async for piece in self._stream(plan):
                yield None, piece

    async def _plan(self, session: AsyncSession, query: EvidenceFilter, tenant_bound: bool) -> ExportPlan:
        plan = ExportPlan(query, session)
        where, params = _where(query)
        matched = {
            chain_id: (int(count), int(newest))
            for chain_id, count, newest in await session.execute(
                sa.text(
                    f"SELECT chain_id, count(*), max(seq) FROM evidence_records WHERE {where} GROUP BY chain_id"
                ),
                params,
            )
        }
        chains = (
            await session.execute(
                sa.text(
                    "SELECT chain_id, node_id, head_seq, state, alarm FROM evidence_chains ORDER BY chain_id"
                )
            )
        ).all()
        if tenant_bound:
            held = {
                chain_id
                for (chain_id,) in await session.execute(
                    sa.text("SELECT DISTINCT chain_id FROM evidence_records WHERE tenant_id = :t"),
                    {"t": query.tenant_id},
                )
            }
            chains = [c for c in chains if c[0] in held]
        statements: dict[str, list[str]] = {}
        for chain_id, envelope in await session.execute(
            sa.text("SELECT chain_id, statement FROM evidence_pruned_ranges ORDER BY chain_id, last_seq")
        ):
            statements.setdefault(chain_id, []).append(bytes(envelope).decode())
        total = 0
        for chain_id, node_id, head_seq, state, alarm in chains:
            count, newest = matched.get(chain_id, (0, 0))
            note, size = await _checkpoint_for(session, chain_id, newest)
            pruned = decode_statement(statements[chain_id][-1]) if chain_id in statements else None
            after = pruned.last_seq if pruned is not None else 0
            if after:
                plan.pruned[chain_id] = statements[chain_id]
            if size < after:  # every covering checkpoint is of pruned records only
                note, size, count = "", after, 0
            elif count and newest > size:
                count = (
                    await session.execute(
                        sa.text(
                            f"SELECT count(*) FROM evidence_records WHERE {where} AND chain_id = :chain "
                            "AND seq > :after AND seq <= :n"
                        ),
                        {**params, "chain": chain_id, "after": after, "n": size},
                    )
                ).scalar_one()
            searched = Searched(chain_id, node_id, after + 1, size, int(count), int(head_seq), state, alarm)
            if count:
                plan.chains.append(_Chain(searched, note, pruned))
                total += int(count)
            else:
                plan.unmatched.append(searched)
        if total > self._max_records:
            raise ExportTooLarge(
                f"the query matches {total} records; a pack holds at most {self._max_records} "
                "(max_export_records): narrow it (a shorter time range, a tenant, a model)"
            )
        return plan

    async def _stream(self, plan: ExportPlan) -> AsyncIterator[bytes]:
        session = plan.session
        out = _Chunks()
        writer = PackWriter(out)  # type: ignore[arg-type]  # anything with write(bytes)
        writer.header(KIND_CONTROL_PLANE)
        signers = await self._keyring.signers(session)
        if not signers:
            raise ExportImpossible("no signing key is active to seal the pack")
        active = signers[0]
        writer.certificates(self._node_ca_pem, *await _certificates(session, plan))
        if plan.pruned:
            writer.pruned(
                {
                    chain: [countersigned(e, active) for e in envelopes]
                    for chain, envelopes in plan.pruned.items()
                }
            )
        where, params = _where(plan.query)
        for chain in plan.chains:
            s = chain.searched
            proof = await _proof(session, plan.query, s, chain.pruned)
            note = await witnessed_by_active(session, chain.note, active)
            writer.chain(ChainSection(s, note, [h.hex() for h in proof]))
            rows = await session.stream(
                sa.text(
                    f"SELECT body FROM evidence_records WHERE {where} AND chain_id = :chain "
                    "AND seq >= :first AND seq <= :n ORDER BY seq"
                ),
                {**params, "chain": s.chain_id, "first": s.from_seq, "n": s.to_seq},
            )
            async for batch in rows.partitions(FETCH_ROWS):
                for (body,) in batch:
                    writer.record(bytes(body))
                if out.size >= CHUNK_BYTES:
                    yield out.take()
        manifest = {
            "pack_id": plan.pack_id,
            "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "kind": KIND_CONTROL_PLANE,
            "query": query_json(plan.query),
            "records": plan.records,
            "node_ca_sha256": certificate_sha256(self._node_ca_pem),
            "chains": [c.searched.to_json() for c in plan.chains],
            "searched_without_match": [s.to_json() for s in plan.unmatched],
            "alarms": await _alarms(
                session, [c.searched.chain_id for c in plan.chains] + [s.chain_id for s in plan.unmatched]
            ),
        }
        writer.seal(manifest, lambda m: [sign_ed25519(active.private_key, m)])
        yield out.take()


async def witnessed_by_active(session: AsyncSession, note: str, active: Signer) -> str:
    """``note`` with a cosignature by ``active`` at the time of its earliest cosignature by a
    key of this control plane (each verified with the key's stored public half); the note
    unchanged when ``active`` cosigned it already or nothing of ours did."""
    data = note.encode()
    by = cosignature.cosigned_by(data)
    if not by or active.key_id in by:
        return note
    rows = await session.execute(
        sa.select(SigningKey.key_id, SigningKey.public_key).where(SigningKey.key_id.in_(sorted(by)))
    )
    keys = {key_id: Ed25519PublicKey.from_public_bytes(bytes(raw)) for key_id, raw in rows}
    try:
        seen = cosignature.witnesses(data, keys)
    except cosignature.CosignatureInvalid:
        seen = []  # not vouched for: the verifier judges the line as it stands
    if not seen:
        return note
    when = min(w.time for w in seen)
    return cosignature.cosign(data, active.key_id, active.private_key, when).decode()


async def _checkpoint_for(session: AsyncSession, chain_id: str, newest: int) -> tuple[str, int]:
    """The note and size of the checkpoint a chain is proven against (module docstring;
    ``newest``: the newest matching seq, 0 for none: then the newest checkpoint); ("", 0)
    when it has none whose root matched."""
    row = None
    if newest:
        row = (
            await session.execute(
                sa.text(
                    "SELECT note, tree_size FROM evidence_checkpoints WHERE chain_id = :c AND root_matches "
                    "AND tree_size >= :s ORDER BY tree_size LIMIT 1"
                ),
                {"c": chain_id, "s": newest},
            )
        ).first()
    if row is None:
        row = (
            await session.execute(
                sa.text(
                    "SELECT note, tree_size FROM evidence_checkpoints WHERE chain_id = :c AND root_matches "
                    "ORDER BY tree_size DESC LIMIT 1"
                ),
                {"c": chain_id},
            )
        ).first()
    return (str(row[0]), int(row[1])) if row is not None else ("", 0)


async def _certificates(
    session: AsyncSession, plan: ExportPlan
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Every stored certificate of each node with a chain in the pack, oldest first, and
    when each revoked one was revoked (by certificate SHA-256)."""
    nodes = sorted({c.searched.node_id for c in plan.chains})
    found: dict[str, list[str]] = {node: [] for node in nodes}
    revoked: dict[str, str] = {}
    rows = await session.execute(
        sa.text(
            "SELECT node_id, certificate_pem, revoked_at FROM node_certificates WHERE node_id = ANY(:n) "
            "AND certificate_pem <> '' ORDER BY not_before, serial"
        ),
        {"n": nodes},
    )
    for node_id, pem, revoked_at in rows:
        found[node_id].append(pem)
        if revoked_at is not None:
            revoked[certificate_sha256(pem)] = revoked_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return found, revoked


async def _proof(
    session: AsyncSession, query: EvidenceFilter, s: Searched, pruned: PrunedStatement | None
) -> list[bytes]:
    """The multiproof of the chain's matching records in its tree of ``to_seq`` records; the
    records before ``from_seq`` are the ``pruned`` statement's compact range."""
    where, params = _where(query)
    bounds = {"chain": s.chain_id, "first": s.from_seq, "n": s.to_seq}
    selected = [
        int(seq) - 1
        for (seq,) in await session.execute(
            sa.text(
                f"SELECT seq FROM evidence_records WHERE {where} AND chain_id = :chain "
                "AND seq >= :first AND seq <= :n ORDER BY seq"
            ),
            {**params, **bounds},
        )
    ]
    prefix: Sequence[tuple[int, bytes]] = pruned.compact_range if pruned is not None else ()
    first = s.from_seq
    # The subtrees left of the first matching record are the compact range of the records
    # before it: from the nearest checkpoint's (migration 0024), only the leaves after it are
    # read, not every leaf of the chain from its start.
    nearest = (
        await session.execute(
            sa.text(
                "SELECT tree_size, frontier FROM evidence_checkpoints WHERE chain_id = :chain "
                "AND root_matches AND frontier IS NOT NULL AND tree_size >= :first AND tree_size <= :f "
                "ORDER BY tree_size DESC LIMIT 1"
            ),
            {"chain": s.chain_id, "first": s.from_seq, "f": selected[0] if selected else 0},
        )
    ).first()
    if nearest is not None:
        first = int(nearest[0]) + 1
        prefix = compact_range(bytes(nearest[1]))
    builder = merkle.MultiproofBuilder(merkle.multiproof_ranges(selected, s.to_seq), prefix)
    rows = await session.stream(
        sa.text(
            "SELECT seq, hash FROM evidence_records WHERE chain_id = :chain AND seq >= :first "
            "AND seq <= :n ORDER BY seq"
        ),
        {**bounds, "first": first},
    )
    expected = first
    async for batch in rows.partitions(FETCH_ROWS * 10):
        for seq, digest in batch:
            if seq != expected:
                break
            builder.add(merkle.leaf_hash(bytes(digest)))
            expected += 1
        else:
            continue
        break
    if expected != s.to_seq + 1:
        raise ExportImpossible(
            f"chain {shown(s.chain_id)}: record seq {expected} is not stored (pruned?), so its records "
            f"cannot be proven against its checkpoint of size {s.to_seq}"
        )
    return builder.finish()


async def _alarms(session: AsyncSession, chain_ids: list[str]) -> list[dict[str, Any]]:
    rows = await session.execute(
        sa.text(
            "SELECT chain_id, seq, kind, detail, at FROM evidence_alarms WHERE chain_id = ANY(:c) "
            "ORDER BY id DESC LIMIT :n"
        ),
        {"c": chain_ids, "n": MAX_ALARMS},
    )
    return [
        {
            "chain_id": chain_id,
            "seq": int(seq),
            "kind": kind,
            "detail": detail,
            "at": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
        for chain_id, seq, kind, detail, at in reversed(rows.all())
    ]
