"""Retention: old monthly partitions dropped, each chain's pruned range stated and signed.

``EvidenceRetention.prune(before)`` takes every monthly partition of ``evidence_records``
that ends at or before ``before`` and, in one transaction (so nothing is half done):

1. locks them (ingest waits) and, per chain with records in them, checks that those records
   are the chain's next prefix: seqs ``first..last`` with ``first`` one after the previous
   statement's ``last`` (1 for the first) and none missing; otherwise nothing is pruned;
2. writes a *pruned-range statement* per chain into ``evidence_pruned_ranges``: a DSSE
   envelope (payload type ``PRUNED_PAYLOAD_TYPE``, PAE, Ed25519 signatures by the control
   plane's snapshot signing keys with their key ids, as snapshot envelopes) over JSON::

       {"chain_id", "first_seq", "last_seq", "last_hash" (hex),
        "compact_range": [{"height", "hash" (hex)}...],   # Merkle tree of records 1..last_seq
        "checkpoint": note or "",                         # the smallest stored matching
                                                          # checkpoint with size >= last_seq
        "pruned_before", "at"}                            # RFC 3339, UTC

   ``compact_range`` is the tree's perfect-subtree roots, left to right
   (``controlplane.evidence.tree.StoredTree``): with it and the remaining leaves
   ``last_seq + 1..n`` the root of any later checkpoint of size n is recomputed;
3. drops the partitions (the owner path partitions are created by; the application still
   has no UPDATE or DELETE on any row).

The chains' heads and stored trees are not touched: ingest continues every chain.

Interface for the Evidence Pack exporter: ``pruned_statement(chain_id)`` returns the newest
statement of a chain (a ``PrunedStatement``: its envelope bytes and decoded fields), or None
when nothing of it was pruned. Its ``compact_range`` is the prefix a pack's multiproof starts
from; ``verify_statement`` checks an envelope with the control plane's public keys.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import EVIDENCE_PARTITION_PREFIX, EvidencePrunedRange
from controlplane.errors import shown
from controlplane.evidence.errors import PruneRefused
from controlplane.evidence.partitions import LOCK, Partitions, month_bounds
from controlplane.evidence.tree import StoredTree
from controlplane.keys import Keyring
from dataplane.snapshot.envelope import pae

PRUNED_PAYLOAD_TYPE = "application/vnd.signalbox.evidence-pruned.v1+json"

_MONTHLY = re.compile(re.escape(EVIDENCE_PARTITION_PREFIX) + r"y([0-9]{4})m([0-9]{2})")


@dataclass(frozen=True, slots=True)
class PrunedStatement:
    """A chain's pruned range as signed; ``envelope`` is what verifies."""

    chain_id: str
    first_seq: int
    last_seq: int
    last_hash: bytes
    compact_range: tuple[tuple[int, bytes], ...]
    """(height, root) of the perfect subtrees of records 1..last_seq, left to right."""
    checkpoint: str
    pruned_before: datetime
    at: datetime
    envelope: bytes
    """DSSE JSON envelope: ``payloadType``, base64 ``payload``, ``signatures`` [{keyid, sig}]."""

    def tree(self) -> StoredTree:
        """The Merkle tree of records 1..last_seq, ready to take the records after them."""
        return StoredTree.from_bytes(
            b"".join(bytes([height]) + digest for height, digest in self.compact_range), self.last_seq
        )


@dataclass(frozen=True, slots=True)
class PruneResult:
    partitions: list[str]
    """The partitions dropped."""
    statements: list[PrunedStatement]


def decode_statement(envelope: bytes) -> PrunedStatement:
    """The fields of a statement envelope (its signatures are ``verify_statement``'s)."""
    outer = json.loads(envelope)
    body = json.loads(base64.b64decode(outer["payload"]))
    return PrunedStatement(
        chain_id=body["chain_id"],
        first_seq=body["first_seq"],
        last_seq=body["last_seq"],
        last_hash=bytes.fromhex(body["last_hash"]),
        compact_range=tuple((int(e["height"]), bytes.fromhex(e["hash"])) for e in body["compact_range"]),
        checkpoint=body["checkpoint"],
        pruned_before=datetime.fromisoformat(body["pruned_before"]),
        at=datetime.fromisoformat(body["at"]),
        envelope=envelope,
    )


def verify_statement(envelope: bytes, public_keys: Mapping[str, Ed25519PublicKey]) -> PrunedStatement:
    """The statement if one of its signatures verifies with ``public_keys`` (by key id);
    ``ValueError`` saying why not otherwise. Unknown key ids are ignored."""
    outer = json.loads(envelope)
    if outer.get("payloadType") != PRUNED_PAYLOAD_TYPE:
        raise ValueError(f"payload type is not {PRUNED_PAYLOAD_TYPE}")
    message = pae(PRUNED_PAYLOAD_TYPE, base64.b64decode(outer["payload"]))
    for signature in outer.get("signatures", ()):
        key = public_keys.get(signature.get("keyid", ""))
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(signature["sig"]), message)
        except InvalidSignature:
            continue
        return decode_statement(envelope)
    raise ValueError("no signature by a trusted key verifies")


class EvidenceRetention:
    """Prunes old partitions behind signed statements; one per control plane."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], keyring: Keyring, partitions: Partitions
    ) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self._partitions = partitions

    async def pruned_statement(self, chain_id: str) -> PrunedStatement | None:
        """The newest pruned-range statement of ``chain_id`` (None: nothing of it pruned)."""
        async with self._sessions() as session:
            return await _newest(session, chain_id)

    async def pruned(self) -> dict[str, PrunedStatement]:
        """The newest statement of every chain that has one."""
        async with self._sessions() as session:
            newest = (
                sa.select(EvidencePrunedRange.chain_id, sa.func.max(EvidencePrunedRange.last_seq).label("m"))
                .group_by(EvidencePrunedRange.chain_id)
                .subquery()
            )
            rows = await session.execute(
                sa.select(EvidencePrunedRange.statement).join(
                    newest,
                    sa.and_(
                        newest.c.chain_id == EvidencePrunedRange.chain_id,
                        newest.c.m == EvidencePrunedRange.last_seq,
                    ),
                )
            )
            statements = [decode_statement(bytes(s)) for (s,) in rows]
        return {s.chain_id: s for s in statements}

    async def prune(self, before: datetime) -> PruneResult:
        """Drop every monthly partition entirely before ``before``, each chain's range stated first."""
        if before.tzinfo is None:
            raise ValueError("before must carry a time zone")
        async with self._sessions() as session, session.begin():
            await session.execute(sa.text(LOCK))
            names = await _partitions_before(session, before)
            if not names:
                return PruneResult([], [])
            await session.execute(sa.text(f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE"))
            union = " UNION ALL ".join(f"SELECT chain_id, seq, hash FROM {n}" for n in names)
            ranges = await session.execute(
                sa.text(f"SELECT chain_id, min(seq), max(seq), count(*) FROM ({union}) r GROUP BY chain_id")
            )
            now = datetime.now(UTC)
            statements = []
            signers = await self._keyring.signers(session)
            for chain_id, first, last, count in sorted(ranges.all()):
                previous = await _newest(session, chain_id)
                expected = previous.last_seq + 1 if previous is not None else 1
                if first != expected or count != last - first + 1:
                    raise PruneRefused(
                        f"chain {shown(chain_id)}: the records in the partitions before "
                        f"{before.isoformat()} are seqs {first}..{last} ({count} of them), not the "
                        f"chain's next prefix from seq {expected}: nothing was pruned"
                    )
                tree = previous.tree() if previous is not None else StoredTree()
                hashes = await session.execute(
                    sa.text(f"SELECT hash FROM ({union}) r WHERE chain_id = :c ORDER BY seq"), {"c": chain_id}
                )
                last_hash = b""
                for (digest,) in hashes:
                    last_hash = bytes(digest)
                    tree.append(last_hash)
                checkpoint = (
                    await session.execute(
                        sa.text(
                            "SELECT note FROM evidence_checkpoints WHERE chain_id = :c AND tree_size >= :n "
                            "AND root_matches ORDER BY tree_size LIMIT 1"
                        ),
                        {"c": chain_id, "n": last},
                    )
                ).scalar()
                payload = json.dumps(
                    {
                        "chain_id": chain_id,
                        "first_seq": first,
                        "last_seq": last,
                        "last_hash": last_hash.hex(),
                        "compact_range": [{"height": h, "hash": d.hex()} for h, d in tree._stack],
                        "checkpoint": checkpoint or "",
                        "pruned_before": before.astimezone(UTC).isoformat(),
                        "at": now.isoformat(),
                    },
                    sort_keys=True,
                    separators=(",", ":"),
                ).encode()
                message = pae(PRUNED_PAYLOAD_TYPE, payload)
                envelope = json.dumps(
                    {
                        "payloadType": PRUNED_PAYLOAD_TYPE,
                        "payload": base64.b64encode(payload).decode(),
                        "signatures": [
                            {"keyid": s.key_id, "sig": base64.b64encode(s.private_key.sign(message)).decode()}
                            for s in signers
                        ],
                    },
                    separators=(",", ":"),
                ).encode()
                session.add(
                    EvidencePrunedRange(
                        chain_id=chain_id,
                        first_seq=first,
                        last_seq=last,
                        last_hash=last_hash,
                        pruned_before=before,
                        statement=envelope,
                    )
                )
                statements.append(decode_statement(envelope))
            await session.flush()
            for name in names:
                await session.execute(sa.text(f"DROP TABLE {name}"))
        for name in names:
            self._partitions.forget(name)
        return PruneResult(names, statements)


async def _newest(session: AsyncSession, chain_id: str) -> PrunedStatement | None:
    row = (
        await session.execute(
            sa.select(EvidencePrunedRange.statement)
            .where(EvidencePrunedRange.chain_id == chain_id)
            .order_by(EvidencePrunedRange.last_seq.desc())
            .limit(1)
        )
    ).scalar()
    return decode_statement(bytes(row)) if row is not None else None


async def _partitions_before(session: AsyncSession, before: datetime) -> list[str]:
    """The monthly partitions of ``evidence_records`` whose whole month is before ``before``."""
    rows = await session.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'evidence_records'::regclass"
        )
    )
    names: Sequence[str] = sorted(name for (name,) in rows)
    return [
        name
        for name in names
        if (m := _MONTHLY.fullmatch(name)) is not None
        and month_bounds(int(m.group(1)), int(m.group(2)))[1] <= before
    ]
