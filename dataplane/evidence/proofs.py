"""Proofs from a node's own files: a chain's log (``dataplane.evidence.log``) and its
checkpoints file (``dataplane.evidence.checkpoint``).

- ``inclusion(...)``: the RFC 9162 inclusion proof of one record (by ``seq`` or
  ``record_id``) in one checkpoint; ``InclusionProof.verify(key)`` checks it against the
  checkpoint's signature and root, needing nothing but the record hash and the note.
- ``consistency(...)``: the RFC 9162 consistency proof between two checkpoints (the later
  one extends the earlier: nothing before it was changed, removed or reordered);
  ``ConsistencyProof.verify(key)`` checks it with both notes.
- ``verify_chain_files(...)``: the whole chain (``seq`` without gaps, ``prev_hash`` links,
  every ``hash``, every ``chain_id``), every checkpoint (its signature, its root equals the
  tree of that many records) and every two consecutive checkpoints consistent. The first
  problem raises ``EvidenceChainBroken`` naming the record (``record seq N (line L)``, or
  ``(line L of <segment file>)`` past the first segment) or the checkpoint
  (``checkpoint K (size S)``, counted from 1 in file order).

A chain whose acknowledged prefix was pruned (``dataplane.evidence.segments``) is verified
from its base: the first remaining record must link to the base's hash, and a checkpoint of
at least the base's size must have the root of the tree continued from the base's compact
range over the remaining records. Both checkpoints of a consecutive pair then have roots
recomputed from one and the same leaf sequence, which is what their consistency proof
would establish, so it is only computed when nothing was pruned. A checkpoint older than
the base is checked for its signature, chain and order only (its records are with the
control plane), and ``ChainReport.pruned`` says how many records the base stands for.
Inclusion and consistency proofs need every leaf: after pruning, ``inclusion`` and
``consistency`` refuse (the control plane's store proves pruned records).

Proof hashes are 32-byte values; the ``hex()`` of each is how they travel in JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import checkpoint, merkle, segments
from dataplane.evidence.records import GENESIS_HASH, hash_of_line, where

NodeKey = ec.EllipticCurvePublicKey | x509.Certificate
"""What checkpoints are verified with: the node's public key or its certificate."""


@dataclass(frozen=True, slots=True)
class Chain:
    """A chain as read from its files: the base of what was pruned (None: nothing), the
    remaining records with where each one is (``line L`` ...), and the complete checkpoint
    notes, in order."""

    records: list[dict[str, Any]]
    notes: list[bytes]
    base: segments.Base | None = None
    places: tuple[str, ...] = ()
    lines: tuple[bytes, ...] = ()
    """The records' lines exactly as stored (what their hashes are over)."""

    @classmethod
    def read(cls, log_file: Path, checkpoints_file: Path | None = None) -> Chain:
        base = segments.read_base(log_file)
        live = segments.live_segments(log_file, base.seq if base else 0)
        if not live:
            raise FileNotFoundError(f"no segment of the chain {log_file}")
        records: list[dict[str, Any]] = []
        places: list[str] = []
        lines: list[bytes] = []
        for segment in live:
            with open(segment.path, "rb") as f:
                for n, line in enumerate(f, start=1):
                    if not line.endswith(b"\n"):
                        break  # a torn last line: the node cuts it at start; not a record
                    records.append(segments.json_object(line, where(segment, n)))
                    places.append(where(segment, n))
                    lines.append(line)
        notes = checkpoint.read_notes(checkpoints_file or checkpoint.checkpoints_path(log_file))
        return cls(records, notes, base, tuple(places), tuple(lines))

    def whole(self) -> Chain:
        """This chain, which must not have been pruned (proofs need every leaf)."""
        if self.base is not None:
            raise ValueError(
                f"records up to seq {self.base.seq} were pruned after the control plane acknowledged "
                "them: prove them from the control plane's store"
            )
        return self

    def leaves(self, size: int | None = None) -> list[bytes]:
        """The hashed Merkle leaves of the first ``size`` records (all by default)."""
        chosen = self.records if size is None else self.records[:size]
        return [merkle.leaf_hash(_leaf(r)) for r in chosen]

    def index_of(self, *, seq: int | None = None, record_id: str | None = None) -> int:
        if (seq is None) == (record_id is None):
            raise ValueError("give exactly one of seq and record_id")
        for i, record in enumerate(self.records):
            if (seq is not None and record.get("seq") == seq) or (
                record_id is not None and record.get("record_id") == record_id
            ):
                return i
        raise ValueError(f"no record with {'seq ' + str(seq) if seq is not None else 'id ' + str(record_id)}")

    def checkpoint_of_size(self, size: int | None) -> bytes:
        """The note of the checkpoint of ``size`` records (the last one when None)."""
        if not self.notes:
            raise ValueError("the chain has no checkpoint yet")
        if size is None:
            return self.notes[-1]
        for note in self.notes:
            if checkpoint.parse(note).size == size:
                return note
        raise ValueError(f"no checkpoint of size {size}")


def _leaf(record: dict[str, Any]) -> bytes:
    try:
        return bytes.fromhex(str(record.get("hash", "")))
    except ValueError:
        return b""


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Record ``index`` (seq ``index + 1``) with hash ``record_hash`` is in the checkpoint ``note``."""

    record_hash: bytes
    index: int
    path: list[bytes]
    note: bytes

    def verify(self, key: NodeKey) -> checkpoint.Checkpoint:
        """The checkpoint, once its signature and the proof verify; ``ValueError`` otherwise
        (``CheckpointInvalid`` or ``merkle.ProofError``)."""
        cp = checkpoint.verify(self.note, key)
        merkle.verify_inclusion(self.record_hash, self.index, cp.size, self.path, cp.root)
        return cp


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """The checkpoint ``new_note`` extends ``old_note``."""

    old_note: bytes
    new_note: bytes
    path: list[bytes]

    def verify(self, key: NodeKey) -> tuple[checkpoint.Checkpoint, checkpoint.Checkpoint]:
        old, new = checkpoint.verify(self.old_note, key), checkpoint.verify(self.new_note, key)
        if old.chain_id != new.chain_id:
            raise checkpoint.CheckpointInvalid(f"checkpoints of two chains ({old.chain_id}, {new.chain_id})")
        merkle.verify_consistency(old.size, new.size, old.root, new.root, self.path)
        return old, new


def inclusion(
    log_file: Path,
    *,
    seq: int | None = None,
    record_id: str | None = None,
    checkpoint_size: int | None = None,
    checkpoints_file: Path | None = None,
) -> InclusionProof:
    """The proof that the record with ``seq`` or ``record_id`` is in the checkpoint of
    ``checkpoint_size`` records (default: the last checkpoint); ``ValueError`` when there is
    no such record or checkpoint, or the checkpoint does not cover the record."""
    chain = Chain.read(log_file, checkpoints_file).whole()
    index = chain.index_of(seq=seq, record_id=record_id)
    note = chain.checkpoint_of_size(checkpoint_size)
    size = checkpoint.parse(note).size
    path = merkle.inclusion_proof(chain.leaves(size), index, size)
    return InclusionProof(_leaf(chain.records[index]), index, path, note)


def consistency(
    log_file: Path, old_size: int, new_size: int, *, checkpoints_file: Path | None = None
) -> ConsistencyProof:
    """The proof that the checkpoint of ``new_size`` records extends the one of ``old_size``."""
    chain = Chain.read(log_file, checkpoints_file).whole()
    old, new = chain.checkpoint_of_size(old_size), chain.checkpoint_of_size(new_size)
    path = merkle.consistency_proof(chain.leaves(new_size), old_size, new_size)
    return ConsistencyProof(old, new, path)


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What ``verify_chain_files`` found good."""

    chain_id: str
    records: int
    checkpoints: int
    signed_size: int
    """Records covered by the last checkpoint (the rest await the next one)."""
    pruned: int = 0
    """Records before the remaining ones, pruned after the control plane acknowledged them
    (``records`` counts the remaining ones)."""


def verify_chain_files(
    log_file: Path, key: NodeKey, *, checkpoints_file: Path | None = None, chain_id: str | None = None
) -> ChainReport:
    """Check a chain's log and checkpoints completely (see the module docstring); the first
    problem raises ``EvidenceChainBroken`` naming the record or the checkpoint."""
    chain = Chain.read(log_file, checkpoints_file)
    base = chain.base
    expected = chain_id
    if base is not None:
        if expected is not None and base.chain_id != expected:
            raise EvidenceChainBroken(f"base (seq {base.seq}): of chain {base.chain_id!r}, not {expected!r}")
        expected = base.chain_id
    pruned = base.seq if base else 0
    prev, hashes = (base.hash if base else GENESIS_HASH), []
    for n, (record, line) in enumerate(zip(chain.records, chain.lines, strict=True), start=pruned + 1):
        where = f"record seq {record.get('seq')} ({chain.places[n - pruned - 1]})"
        if expected is None:
            expected = record.get("chain_id")
            if not isinstance(expected, str) or not expected:
                raise EvidenceChainBroken(
                    f"{where}: no chain_id (a log from before chains per worker; not verifiable as a chain)"
                )
        if record.get("chain_id") != expected:
            raise EvidenceChainBroken(f"{where}: chain_id {record.get('chain_id')!r} is not {expected!r}")
        if record.get("seq") != n:
            raise EvidenceChainBroken(f"{where}: expected seq {n} (a record is missing, inserted or moved)")
        if record.get("prev_hash") != prev:
            what = (
                "the base's hash (the last pruned record)"
                if n == pruned + 1 and base
                else "the record before"
            )
            raise EvidenceChainBroken(f"{where}: prev_hash does not match {what}")
        if hash_of_line(line) != record.get("hash"):
            raise EvidenceChainBroken(f"{where}: hash does not match the record's content")
        prev = record["hash"]
        hashes.append(merkle.leaf_hash(_leaf(record)))
    before: checkpoint.Checkpoint | None = None
    tree = base.tree() if base else merkle.Tree()
    total = pruned + len(hashes)
    subtrees = Subtrees(hashes)
    for k, note in enumerate(chain.notes, start=1):
        try:
            cp = checkpoint.verify(note, key)
        except checkpoint.CheckpointInvalid as exc:
            raise EvidenceChainBroken(f"checkpoint {k}: {exc}") from exc
        where = f"checkpoint {k} (size {cp.size})"
        if expected is not None and cp.chain_id != expected:
            raise EvidenceChainBroken(f"{where}: of chain {cp.chain_id!r}, not {expected!r}")
        expected = cp.chain_id
        if cp.size > total:
            raise EvidenceChainBroken(f"{where}: covers more records than the log has ({total})")
        if before is not None and cp.size < before.size:
            raise EvidenceChainBroken(f"{where}: smaller than checkpoint {k - 1} (size {before.size})")
        before = cp
        if cp.size < pruned:
            continue  # its records were pruned: the signature is all there is to check here
        while tree.size < cp.size:
            tree.append(_leaf(chain.records[tree.size - pruned]))
        if tree.root() != cp.root:
            what = (
                f"the first {cp.size} records" if base is None else f"the base continued to {cp.size} records"
            )
            raise EvidenceChainBroken(f"{where}: root does not match the tree of {what}")
        if base is None and k > 1 and (old := checkpoint.parse(chain.notes[k - 2])).size:
            try:
                proof = subtrees.consistency_proof(old.size, cp.size)
                merkle.verify_consistency(old.size, cp.size, old.root, cp.root, proof)
            except merkle.ProofError as exc:
                raise EvidenceChainBroken(f"{where}: not consistent with checkpoint {k - 1}: {exc}") from exc
    return ChainReport(
        chain_id=expected or "",
        records=len(chain.records),
        checkpoints=len(chain.notes),
        signed_size=before.size if before is not None else 0,
        pruned=pruned,
    )


class Subtrees:
    """RFC 9162 consistency proofs over one list of hashed leaves, with every perfect subtree
    hashed once: proving many consecutive checkpoints costs O(n) in all, not O(n) each.
    Its proofs equal ``merkle.consistency_proof``'s."""

    def __init__(self, leaf_hashes: list[bytes]) -> None:
        self._leaves = leaf_hashes
        self._perfect: dict[tuple[int, int], bytes] = {}

    def mth(self, lo: int, hi: int) -> bytes:
        """The root of leaves ``lo .. hi - 1``."""
        n = hi - lo
        if n == 1:
            return self._leaves[lo]
        perfect = n & (n - 1) == 0 and lo % n == 0
        if perfect and (lo, n) in self._perfect:
            return self._perfect[(lo, n)]
        k = 1 << ((n - 1).bit_length() - 1)
        digest = merkle.node_hash(self.mth(lo, lo + k), self.mth(lo + k, hi))
        if perfect:
            self._perfect[(lo, n)] = digest
        return digest

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        if not 0 < old_size <= new_size <= len(self._leaves):
            raise merkle.ProofError(f"no consistency proof from size {old_size} to size {new_size}")
        if old_size == new_size:
            return []
        return self._subproof(old_size, 0, new_size, True)

    def _subproof(self, m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if complete else [self.mth(lo, hi)]
        k = 1 << ((n - 1).bit_length() - 1)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, complete), self.mth(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]
