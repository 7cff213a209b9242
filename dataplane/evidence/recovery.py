"""Reading a chain back at start (``EvidenceLog.start``): its head, its Merkle tree and its
last checkpoint, every remaining record checked on the way.

The sequence and chain continue from the last complete record of the newest segment, and a
torn last line (a crash in the middle of a write) is cut off. The tree is rebuilt from the
base (the compact range of what was pruned, if anything was) and every remaining segment,
each of which must start where the one before ended. Every remaining record is checked as the
verifier checks it (seq, the link to the record before, its own hash, its chain): a record
edited, replaced, dropped or moved in the middle refuses the start, naming the file and line,
rather than have the node append to, and sign checkpoints over, a chain that no longer
verifies. The last complete checkpoint must match the tree of that many records (a torn one
is cut off).

A power cut right after a roll-over can leave the full segment short of its last records
while the new one exists: the chain then continues from the full one's last whole record and
the later segments are set aside in ``lost/`` (``_cut_after_power_loss``), unless a signed
checkpoint covers what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import checkpoint, merkle, segments
from dataplane.evidence.records import GENESIS_HASH, ChainHead, hash_of_line

log = logging.getLogger("signalbox.dataplane.evidence")

_TAIL_CHUNK = 64 * 1024
LOST_DIR = "lost"
"""Under the evidence directory: segments set aside after a power cut (``_cut_after_power_loss``)."""


@dataclass(frozen=True, slots=True)
class Recovered:
    head: ChainHead
    tree: merkle.Tree
    signed_size: int
    segment: segments.Segment
    """The newest segment, where writing continues."""
    segment_size: int
    live_bytes: int
    """Bytes of every remaining segment."""


def recover(path: Path, checkpoints: Path, chain: str) -> Recovered:
    """The chain head (a torn final line of the newest segment cut away), the Merkle tree
    continued from the base over every remaining segment (each record checked to continue
    the chain: ``_walk_segment``), and the size of the last complete checkpoint (a torn last
    one cut away), which must match the tree."""
    base = segments.read_base(path)
    if base is not None and base.chain_id != chain:
        raise EvidenceChainBroken(f"{segments.base_path(path)}: of chain {base.chain_id!r}, not {chain!r}")
    base_seq = base.seq if base else 0
    live = segments.live_segments(path, base_seq)
    for leftover in segments.all_segments(path):
        if leftover not in live:
            # Pruned by the base already; the deletion was interrupted.
            log.warning(
                "evidence log %s: deleting %s, pruned before the last stop", chain, leftover.path.name
            )
            leftover.path.unlink()
    if not live:
        live = [segments.Segment(base_seq + 1, segments.segment_path(path, base_seq + 1))]
    for segment in live:
        # A FIFO held the start: the log opens the newest segment to append, which waits for
        # a reader; an older one was read, which waits for a writer.
        segments.refuse_special(segment.path)
    live = _cut_after_power_loss(path, live, checkpoints, chain)
    head = ChainHead(base.seq, base.hash) if base else ChainHead(0, GENESIS_HASH)
    # Writes only ever go to the newest segment: only it can end in a torn line.
    for segment in reversed(live):
        tail = _recover_tail(segment.path, chain, cut=segment is live[-1])
        if tail.seq:
            head = tail
            break
    tree = base.tree() if base else merkle.Tree()
    # Every remaining record is checked as the verifier checks it (seq, link, own hash, chain)
    # before the log extends the chain: only the last record and the last checkpoint say
    # nothing of a record in the middle edited, replaced or moved after the last checkpoint,
    # and a node that appended and signed over such a chain would fork it under its key.
    walked = ChainHead(base.seq, base.hash) if base else ChainHead(0, GENESIS_HASH)
    live_bytes = 0
    for segment in live:
        if tree.size != segment.start - 1:
            raise EvidenceChainBroken(
                f"{segment.path}: starts at seq {segment.start} but the records before end at seq {tree.size}"
            )
        try:
            size = segment.path.stat().st_size
        except FileNotFoundError:
            continue  # the newest segment of a new chain, or one whose creation was lost
        if not size:
            continue  # (not read: a device such as /dev/full reads forever)
        walked = _walk_segment(segment.path, walked, chain, tree)
        live_bytes += size
    if tree.size != head.seq:
        raise EvidenceChainBroken(f"{path}: {tree.size} records but the last one has seq {head.seq}")
    newest = live[-1]
    try:
        newest_size = newest.path.stat().st_size
    except FileNotFoundError:
        newest_size = 0
    signed = _recover_checkpoints(checkpoints, path, tree)
    return Recovered(head, tree, signed, newest, newest_size, live_bytes)


def _cut_after_power_loss(
    path: Path, live: list[segments.Segment], checkpoints: Path, chain: str
) -> list[segments.Segment]:
    """``live`` without the segments after an older one that ends short: the state a power
    cut leaves when it comes after a roll-over and before the next sync round. The full
    segment's last records were with the OS but not on disk yet, while the new segment (its
    name, maybe some of its records) was; what it holds follows records that are gone and
    can never be part of the chain. Nothing of it was shipped or signed for (both wait for
    the fsync): the chain continues from the last whole record, the torn line after it is
    cut, and the later segments are moved to ``lost/`` (never deleted: they are evidence of
    what was answered in the unsynced window). A signed checkpoint covering records past that
    point says they were on disk once: removed since, not lost, so the start is refused and
    nothing is moved."""
    for i, segment in enumerate(live[:-1]):
        following = live[i + 1]
        head, torn = _read_tail(segment.path, chain)
        last = head.seq or segment.start - 1
        if last + 1 >= following.start:
            continue  # whole (a torn line after it, or overlap, is refused by the walk)
        signed = _signed_size(checkpoints)
        if signed > last:
            raise EvidenceChainBroken(
                f"{segment.path}: ends at seq {last} but the next segment starts at seq {following.start}, "
                f"and {checkpoints.name} signs {signed} records: records were removed after they were "
                "on disk, not lost to a power cut"
            )
        lost = path.parent / LOST_DIR
        lost.mkdir(mode=0o700, exist_ok=True)
        moved = []
        for later in live[i + 1 :]:
            if later.path.exists():
                target = lost / f"{later.path.name}.{time.time_ns()}"
                os.rename(later.path, target)
                moved.append(target.name)
        segments.fsync_dir(path.parent)
        segments.fsync_dir(lost)
        if torn:
            _truncate(segment.path, torn)
        log.error(
            "evidence log %s: %s ends at seq %d but the next segment starts at seq %d: a power cut "
            "after a roll-over lost records %d..%d (answered, never synced, shipped or signed); "
            "the chain continues from seq %d, and the later segments are kept in %s: %s",
            chain,
            segment.path.name,
            last,
            following.start,
            last + 1,
            following.start - 1,
            last,
            lost,
            ", ".join(moved) or "none had reached the disk",
        )
        return live[: i + 1]
    return live


def _signed_size(checkpoints: Path) -> int:
    """Records the last complete checkpoint in ``checkpoints`` covers (0: none readable)."""
    try:
        with segments.open_regular(checkpoints) as f:
            notes, _ = checkpoint.split(f.read())
        return checkpoint.parse(notes[-1]).size if notes else 0
    except FileNotFoundError:
        return 0
    except checkpoint.CheckpointInvalid as exc:
        raise EvidenceChainBroken(f"{checkpoints}: checkpoint {len(notes)}: {exc}") from exc


class _Link(msgspec.Struct, gc=False):
    """The members of a record line that place it in the chain (the others are skipped)."""

    seq: int
    prev_hash: str
    hash: str
    chain_id: str | None = None


_read_link = msgspec.json.Decoder(_Link).decode


def _walk_segment(path: Path, before: ChainHead, chain: str, tree: merkle.Tree) -> ChainHead:
    """Check every record line of segment ``path`` to follow the one before it (``before``:
    the head the segments before it end at), add each to ``tree``; the head after the last.
    ``EvidenceChainBroken`` naming the file, the line and the rule otherwise."""
    seq, digest = before.seq, before.hash
    append, leaf = tree.append, bytes.fromhex
    with segments.open_regular(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                raise EvidenceChainBroken(f"{path}: ends in a torn record but is not the newest segment")
            now: object
            prev: object
            claimed: object
            of_chain: object
            try:
                # msgspec reads the four members without building the rest: this runs for
                # every record of every remaining segment at each start.
                link = _read_link(line)
                now, prev, claimed, of_chain = link.seq, link.prev_hash, link.hash, link.chain_id
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                # (RecursionError: msgspec has no depth limit of its own.)
                record = segments.json_object(line, f"{path}: line {n}")  # names what is not JSON
                now, prev, claimed, of_chain = (
                    record.get(k) for k in ("seq", "prev_hash", "hash", "chain_id")
                )
            if type(now) is not int or now != seq + 1:
                raise EvidenceChainBroken(
                    f"{path}: line {n}: seq {repr(now)[:40]} follows seq {seq} (a record missing, inserted or moved)"
                )
            if prev != digest:
                raise EvidenceChainBroken(f"{path}: line {n}: prev_hash does not match the hash of seq {seq}")
            computed = hash_of_line(line)
            if computed is None or computed != claimed:
                raise EvidenceChainBroken(f"{path}: line {n}: hash does not match the record's content")
            if of_chain != chain:
                raise EvidenceChainBroken(f"{path}: line {n}: of chain {repr(of_chain)[:200]}, not {chain!r}")
            seq, digest = now, computed
            append(leaf(computed))
    return ChainHead(seq, digest)


def _recover_checkpoints(path: Path, log_file: Path, tree: merkle.Tree) -> int:
    try:
        with segments.open_regular(path) as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    notes, complete = checkpoint.split(data)
    if complete < len(data):
        log.warning(
            "evidence checkpoints %s: cutting a torn last checkpoint (%d bytes)", path, len(data) - complete
        )
        with open(path, "r+b") as f:
            f.truncate(complete)
            os.fsync(f.fileno())
    if not notes:
        return 0
    try:
        last = checkpoint.parse(notes[-1])
    except checkpoint.CheckpointInvalid as exc:
        raise EvidenceChainBroken(f"{path}: checkpoint {len(notes)}: {exc}") from exc
    if last.size > tree.size:
        raise EvidenceChainBroken(
            f"{path}: checkpoint {len(notes)} covers {last.size} records but {log_file} has {tree.size}"
        )
    if last.size == tree.size and last.root != tree.root():
        raise EvidenceChainBroken(f"{path}: checkpoint {len(notes)}: root does not match the log's records")
    return last.size


def _recover_tail(path: Path, chain: str, *, cut: bool = True) -> ChainHead:
    """The last complete record's head; a torn final line is truncated away (with ``cut``;
    without, it is an error)."""
    head, torn = _read_tail(path, chain)
    if torn and not cut:
        raise EvidenceChainBroken(f"{path}: ends in a torn record but is not the newest segment")
    if torn:
        log.warning("evidence log %s: cutting a torn last record (%d bytes)", path, torn)
        _truncate(path, torn)
    return head


def _truncate(path: Path, torn: int) -> None:
    """Cut the last ``torn`` bytes of ``path`` away, durably."""
    with open(path, "r+b") as f:
        f.truncate(os.fstat(f.fileno()).st_size - torn)
        os.fsync(f.fileno())


def _read_tail(path: Path, chain: str) -> tuple[ChainHead, int]:
    """The head of the last complete record of ``path`` (seq 0 when none) and the length of
    the torn line after it (0 when the file ends with a whole line); the last record checked
    to be whole and of ``chain``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ChainHead(0, GENESIS_HASH), 0
    if size == 0:
        return ChainHead(0, GENESIS_HASH), 0
    with segments.open_regular(path) as f:
        reach = _TAIL_CHUNK
        while True:
            start = max(0, size - reach)
            f.seek(start)
            data = f.read(size - start)
            lines = data.split(b"\n")
            # Complete lines are the ones followed by "\n"; the last element is the remainder.
            torn = lines[-1]
            complete = [line for line in lines[:-1] if line]
            if start > 0 and len(complete) <= 1:
                # The chunk may begin mid-line: read further back for a whole record, twice as
                # far each time. (A chunk further each time read the tail again and again: a
                # 64 MB segment without a newline near its end took ~15 s to start from.)
                reach *= 2
                continue
            break
    if not complete:
        return ChainHead(0, GENESIS_HASH), len(torn)
    try:
        last = json.loads(complete[-1])
    except RecursionError as exc:  # no depth limit but the stack's: not a ValueError
        raise EvidenceChainBroken(f"{path}: last record is not JSON: nested too deep") from exc
    except ValueError as exc:
        raise EvidenceChainBroken(f"{path}: last record is not JSON: {exc}") from exc
    digest = hash_of_line(complete[-1] + b"\n")
    # None on both sides (a line without its hash member) is no match: KeyError below, else.
    if digest is None or not isinstance(last, dict) or digest != last.get("hash"):
        raise EvidenceChainBroken(f"{path}: last record's hash does not match its content")
    if last.get("chain_id") != chain:
        raise EvidenceChainBroken(
            f"{path}: last record is of chain {last.get('chain_id')!r}, not {chain!r} "
            "(a log from before records carried chain_id, or another chain's file): move it away"
        )
    seq = last.get("seq")
    # Checked, not int()-ed: a missing seq was a KeyError the node's start does not catch
    # (a traceback, not a refusal), and "6" or 6.0 are not what the log writes.
    if type(seq) is not int or seq < 1:
        raise EvidenceChainBroken(f"{path}: last record's seq {repr(seq)[:40]} is not a positive integer")
    return ChainHead(seq, digest), len(torn)
