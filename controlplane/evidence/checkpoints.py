"""Checkpoint notes a node ships: parsed, their signature checked, their root compared with
the stored records'.

A note is a C2SP tlog-checkpoint: origin ``signalbox.evidence/<chain id>``, size, base64
root, a blank line, signature lines (none by a control-plane key name: a node cannot bring a
cosignature of its own making). Its signature is
checked by the node's certified key (``verify_node_checkpoint``) before anything of the
batch is stored; its root once records 1..size are stored (``store_checkpoint``): a mismatch
is a tamper alarm naming it. A new checkpoint whose root matches is stored with the control
plane's witness cosignature added (``dataplane.evidence.cosignature``): the time the control
plane saw it, which an auditor trusts where the node's own ``time`` line is only its claim.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import EvidenceAlarm, EvidenceCheckpoint
from controlplane.errors import shown
from controlplane.evidence.errors import EvidenceRefused, Tampered
from controlplane.evidence.retention import newest_statement
from controlplane.evidence.tree import StoredTree
from controlplane.evidence.tree import frontier as stored_frontier
from controlplane.limits import INT64_MAX
from dataplane.evidence import checkpoint as node_checkpoint
from dataplane.evidence import cosignature, merkle

MAX_NOTE_BYTES = 8 * 1024
CHECKPOINT_ORIGIN = "signalbox.evidence/"

_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")

CheckpointVerifier = Callable[[str, str, bytes], None]
"""``(note, node_id, public_key)``: returns when ``note`` carries a valid signature by
``node_id``'s certified key (``public_key``: DER SubjectPublicKeyInfo from the certificate
the node presented), raises ``ValueError`` saying why not otherwise."""


def verify_node_checkpoint(note: str, node_id: str, public_key: bytes) -> None:
    """The production check: the node's ECDSA signature in the C2SP note
    (``dataplane.evidence.checkpoint``), with the key of the certificate it presented."""
    if not public_key:
        raise ValueError("no node certificate to check it with")
    try:
        key = load_der_public_key(public_key)
    except ValueError as exc:
        raise ValueError("the node certificate's key cannot be read") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the node certificate's key is not an ECDSA key")
    checked = node_checkpoint.verify(note.encode(), key)
    if checked.node_id != node_id:
        raise ValueError(f"signed as node {shown(checked.node_id)}, not {shown(node_id)}")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    index: int
    size: int
    root: bytes
    note: str

    @property
    def name(self) -> str:
        return f"checkpoint {self.index} (size {self.size}, root {self.root.hex()[:16]}…)"


def parse_checkpoint(chain_id: str, index: int, note: str) -> Checkpoint:
    """The body of a C2SP tlog-checkpoint note: origin, size, base64 root, extensions, a blank
    line, signature lines (which ``verify_checkpoint_signature`` checks)."""
    where = f"chain {shown(chain_id)}: checkpoint {index}"
    if len(note.encode()) > MAX_NOTE_BYTES:
        raise EvidenceRefused(f"{where}: more than {MAX_NOTE_BYTES} bytes")
    if _CONTROL.search(note):
        # Stored as text, which cannot hold NUL: a signed note with one in a line the node's
        # signature does not cover (another key's signature line) failed its batch's write,
        # UNAVAILABLE "resend", and the node resent it for ever.
        raise EvidenceRefused(f"{where}: control characters other than newlines (a C2SP note has none)")
    body, blank, signatures = note.partition("\n\n")
    if not blank or not signatures.strip():
        raise EvidenceRefused(f"{where}: a note is a body, an empty line and signature lines")
    lines = body.split("\n")
    if len(lines) < 3:
        raise EvidenceRefused(f"{where}: the body needs origin, size and root lines")
    if f"{cosignature.SIGNATURE_PREFIX}{cosignature.KEY_NAME_PREFIX}" in signatures:
        raise EvidenceRefused(
            f"{where}: carries a signature line by {cosignature.KEY_NAME_PREFIX}…: only the control "
            "plane adds its cosignature, when it stores the checkpoint"
        )
    if lines[0] != CHECKPOINT_ORIGIN + chain_id:
        raise EvidenceRefused(
            f"{where}: origin must be {CHECKPOINT_ORIGIN + chain_id!r}, not {shown(lines[0])}"
        )
    if not _SIZE.fullmatch(lines[1]) or int(lines[1]) > INT64_MAX:
        raise EvidenceRefused(f"{where}: size must be a decimal without leading zeros, not {shown(lines[1])}")
    try:
        root_hash = base64.b64decode(lines[2], validate=True)
    except binascii.Error as exc:
        raise EvidenceRefused(f"{where}: root is not base64") from exc
    if len(root_hash) != 32:
        raise EvidenceRefused(f"{where}: root must be 32 bytes, not {len(root_hash)}")
    return Checkpoint(index, int(lines[1]), root_hash, note)


Witness = Callable[[str], str]
"""A note -> the same note with the control plane's cosignature line added."""


async def store_checkpoint(
    session: AsyncSession,
    chain_id: str,
    head_seq: int,
    roots: Mapping[int, bytes],
    checkpoint: Checkpoint,
    witness: Witness | None = None,
    frontiers: Mapping[int, bytes] | None = None,
) -> int | EvidenceRefused:
    """Store ``checkpoint`` once its records are stored (``head_seq``: the chain's head in this
    transaction; ``roots``: tree roots of sizes this batch passed, ``frontiers`` their compact
    ranges), cosigned by ``witness`` when its root matches, with the compact range of its
    records (what exports prove later records from): 1 if new, 0 if already held; the
    refusal when it cannot be checked yet or its root is not the records'."""
    if checkpoint.size > head_seq or checkpoint.size == 0:
        return EvidenceRefused(
            f"chain {shown(chain_id)}: {checkpoint.name}: only records 1..{head_seq} are stored; "
            "ship a checkpoint after the records it covers"
        )
    held = (
        await session.execute(
            sa.select(EvidenceCheckpoint.root_matches).where(
                EvidenceCheckpoint.chain_id == chain_id,
                EvidenceCheckpoint.tree_size == checkpoint.size,
                EvidenceCheckpoint.root_hash == checkpoint.root,
            )
        )
    ).scalar()
    if held:
        return 0  # taken and checked before (a restarted shipper offers its newest again)
    root = roots.get(checkpoint.size)
    frontier = (frontiers or {}).get(checkpoint.size)
    if root is None:
        tree = await _tree_of(session, chain_id, checkpoint.size)
        if tree is None:
            # Those records were pruned by retention, and with them the roots inside the
            # pruned prefix: there is nothing left for such a checkpoint to prove. Not stored,
            # not refused (the node would offer it again forever).
            return 0
        root, frontier = tree.root(), stored_frontier(tree)
    matches = root == checkpoint.root
    if held is None:
        session.add(
            EvidenceCheckpoint(
                chain_id=chain_id,
                tree_size=checkpoint.size,
                root_hash=checkpoint.root,
                note=witness(checkpoint.note) if matches and witness is not None else checkpoint.note,
                root_matches=matches,
                frontier=frontier if matches else None,
            )
        )
    if matches:
        return 1
    refused = Tampered(
        f"chain {shown(chain_id)}: {checkpoint.name}: the stored records 1..{checkpoint.size} make root "
        f"{root.hex()}, not {checkpoint.root.hex()}",
        seq=checkpoint.size,
    )
    if held is None:
        session.add(
            EvidenceAlarm(
                chain_id=chain_id,
                seq=checkpoint.size,
                kind="checkpoint_mismatch",
                expected=root.hex(),
                arrived=checkpoint.root.hex(),
                detail=refused.message[:2000],
            )
        )
    return refused


async def _tree_of(session: AsyncSession, chain_id: str, size: int) -> merkle.Tree | None:
    """The tree of the chain's records 1..``size`` as the control plane holds them: the
    nearest compact range stored before it (ingest's every ``FRONTIER_EVERY`` records, a
    checkpoint's, else its pruned prefix's if retention pruned one, else the empty tree)
    extended by the stored records after it: fewer than ``FRONTIER_EVERY`` leaf hashes read,
    not every one from the chain's start. None when ``size`` ends inside the pruned prefix
    (those roots are gone)."""
    pruned = await newest_statement(session, chain_id)
    tree = merkle.Tree() if pruned is None else pruned.tree()
    if size < tree.size:
        return None
    nearest = (
        await session.execute(
            sa.text(
                "(SELECT tree_size, frontier FROM evidence_frontiers WHERE chain_id = :c "
                "AND tree_size > :s AND tree_size <= :n ORDER BY tree_size DESC LIMIT 1) UNION ALL "
                "(SELECT tree_size, frontier FROM evidence_checkpoints WHERE chain_id = :c AND root_matches "
                "AND frontier IS NOT NULL AND tree_size > :s AND tree_size <= :n ORDER BY tree_size DESC LIMIT 1) "
                "ORDER BY tree_size DESC LIMIT 1"
            ),
            {"c": chain_id, "s": tree.size, "n": size},
        )
    ).first()
    if nearest is not None:
        tree = StoredTree.from_bytes(bytes(nearest[1]), int(nearest[0]))
    rows = await session.execute(
        sa.text(
            "SELECT hash FROM evidence_records WHERE chain_id = :c AND seq > :s AND seq <= :n ORDER BY seq"
        ),
        {"c": chain_id, "s": tree.size, "n": size},
    )
    for (digest,) in rows:
        tree.append(bytes(digest))
    return tree
