"""Where a chain's records live on disk: segment files, and the base of a pruned prefix.

**Segments.** A chain (``dataplane.evidence.log``) is a sequence of segment files, each
holding the records ``start .. next start - 1`` (the newest one: ``start`` to the head).
The segment starting at seq 1 is the chain file itself, ``<node_id>@<worker>.jsonl`` (so a
chain written before segments existed is simply its own first segment); a later segment
is ``<chain file>.<start>`` with ``start`` as 20 decimal digits (sorting by name is sorting
by seq). The writer starts a new segment when the record it is about to write would take
the newest one past ``segment_bytes`` (a record larger than that gets a segment of its
own); records, seq numbers, hashes and checkpoints do not change at a segment boundary.

**Base.** The shipper deletes whole segments the control plane acknowledged
(``dataplane.evidence.shipper``). Before it deletes any, it writes ``<chain file>.base``
(a temporary file, fsynced, renamed over the old one, directory fsynced): one JSON object
with ``chain_id``, ``seq`` and ``hash`` of the last pruned record, and ``frontier``: the
RFC 9162 compact range of the pruned prefix (the hex roots of the perfect subtrees that
make up the tree of the first ``seq`` records, tallest first; ``merkle.Tree.frontier``).
With it the node continues its tree at start and the verifier checks what remains: the
first remaining record's ``prev_hash`` is the base's ``hash``, and every checkpoint of at
least ``seq`` records has the root of the tree continued from the frontier. The base is
not signed: a forged one cannot make a later signed checkpoint verify, and a checkpoint
older than the base can only be checked for its signature (the control plane holds the
pruned records). A segment that lies wholly within the base is a leftover of a crash
between writing the base and deleting the segment: readers skip it and the node deletes
it at start.
"""

from __future__ import annotations

import glob
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import merkle

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
"""Roll over to a new segment file beyond this many bytes (``--evidence-segment-bytes``)."""
MAX_BASE_BYTES = 16 * 1024
"""A base file is a few hundred bytes (at most 64 hashes); a larger one is refused unread."""

_HASH_TAIL = re.compile(rb',"hash":"([0-9a-f]{64})"}\n\Z')
_SEGMENT = re.compile(r"(?P<chain>.+\.jsonl)\.(?P<start>[0-9]{20})")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Segment:
    start: int
    """Seq of the segment's first record."""
    path: Path


@dataclass(frozen=True, slots=True)
class Base:
    """The pruned prefix of a chain: its last record and the compact range of its tree."""

    chain_id: str
    seq: int
    hash: str
    frontier: tuple[bytes, ...]

    def tree(self) -> merkle.Tree:
        return merkle.Tree.from_frontier(self.seq, self.frontier)


def line_hash(line: bytes) -> bytes:
    """The 32-byte record hash of a stored line (found at its end, where the log writes it)."""
    matched = _HASH_TAIL.search(line)
    digest = matched[1].decode() if matched else str(json.loads(line).get("hash", ""))
    return bytes.fromhex(digest)


def segment_path(chain_file: Path, start: int) -> Path:
    """The file of the segment of ``chain_file`` whose first record has seq ``start``."""
    return chain_file if start == 1 else chain_file.with_name(f"{chain_file.name}.{start:020d}")


def base_path(chain_file: Path) -> Path:
    return chain_file.with_name(f"{chain_file.name}.base")


def all_segments(chain_file: Path) -> list[Segment]:
    """Every segment file of the chain, by seq (including leftovers a base covers)."""
    found = [Segment(1, chain_file)] if chain_file.exists() else []
    for path in chain_file.parent.glob(f"{glob.escape(chain_file.name)}.*"):
        matched = _SEGMENT.fullmatch(path.name)
        if matched and matched["chain"] == chain_file.name and int(matched["start"]) > 1:
            found.append(Segment(int(matched["start"]), path))
    return sorted(found, key=lambda s: s.start)


def live_segments(chain_file: Path, base_seq: int) -> list[Segment]:
    """The segments holding records after ``base_seq`` (the newest is always one)."""
    found = all_segments(chain_file)
    return [s for i, s in enumerate(found) if i == len(found) - 1 or found[i + 1].start - 1 > base_seq]


def chain_names(evidence_dir: Path) -> list[Path]:
    """The chain file of every chain with a segment or a base in ``evidence_dir``, sorted
    (a chain whose first segment was pruned is named by its first segment all the same)."""
    names: set[Path] = set()
    for path in evidence_dir.glob("*.jsonl*"):
        if path.name.endswith(".jsonl"):
            names.add(path)
        elif (matched := _SEGMENT.fullmatch(path.name)) is not None:
            names.add(path.with_name(matched["chain"]))
        elif path.name.endswith(".jsonl.base"):
            names.add(path.with_name(path.name.removesuffix(".base")))
    return sorted(names)


def read_base(chain_file: Path) -> Base | None:
    """The chain's base, None when nothing was pruned; ``EvidenceChainBroken`` naming the
    file and the field when it cannot be used."""
    path = base_path(chain_file)
    try:
        with open_regular(path) as f:
            data = f.read(MAX_BASE_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_BASE_BYTES:
        raise EvidenceChainBroken(f"{path}: larger than {MAX_BASE_BYTES} bytes")
    obj = json_object(data, str(path))
    chain, seq, digest, frontier = obj.get("chain_id"), obj.get("seq"), obj.get("hash"), obj.get("frontier")
    if not isinstance(chain, str) or not chain:
        raise EvidenceChainBroken(f"{path}: chain_id is not a non-empty string")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise EvidenceChainBroken(f"{path}: seq is not a positive integer")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise EvidenceChainBroken(f"{path}: hash is not 64 lowercase hex characters")
    if not isinstance(frontier, list) or not all(
        isinstance(h, str) and _HEX64.fullmatch(h) for h in frontier
    ):
        raise EvidenceChainBroken(f"{path}: frontier is not a list of 64-hex-character hashes")
    base = Base(chain, seq, digest, tuple(bytes.fromhex(h) for h in frontier))
    try:
        base.tree()
    except merkle.ProofError as exc:
        raise EvidenceChainBroken(f"{path}: frontier: {exc}") from exc
    return base


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading once it is shown to be a regular file; ``EvidenceChainBroken``
    naming it otherwise. Opened without blocking and checked on what was opened: a FIFO planted
    in the evidence directory made the start wait for a writer forever, and a device such as
    /dev/zero made it read without end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EvidenceChainBroken(f"{path}: not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def refuse_special(path: Path) -> None:
    """``EvidenceChainBroken`` when what ``path`` names is a FIFO, a socket or a directory (a
    missing file is no refusal): a segment the log would open to append to. A device stays
    allowed: writes to it fail, or succeed, on their own, and it is never read (size 0)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISDIR(mode):
        raise EvidenceChainBroken(f"{path}: not a regular file")


def json_object(data: bytes, where: str) -> dict[str, Any]:
    """``data`` as a JSON object; ``EvidenceChainBroken`` starting with ``where`` otherwise."""
    try:
        # orjson first: a chain's check reads every record, and json.loads is several
        # times slower. What orjson refuses (NaN, numbers beyond a double, lone surrogates,
        # which older writers could produce) gets json.loads's verdict. One value reads
        # differently: an integer beyond 64 bits is a float here; no check of a chain
        # reads one (seq is checked to be an integer, and is far below that).
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            obj = json.loads(data)
        except RecursionError as exc:
            # json.loads has no depth limit but the interpreter's stack (orjson stops at 1024).
            raise EvidenceChainBroken(f"{where}: not JSON (nested too deep)") from exc
        except ValueError as exc:
            raise EvidenceChainBroken(f"{where}: not JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise EvidenceChainBroken(f"{where}: not a JSON object")
    return obj


def write_base(chain_file: Path, base: Base) -> None:
    """Persist ``base`` atomically and durably (temporary file, fsync, rename, directory fsync)."""
    path = base_path(chain_file)
    tmp = path.with_name(path.name + ".tmp")
    body = {
        "chain_id": base.chain_id,
        "seq": base.seq,
        "hash": base.hash,
        "frontier": [h.hex() for h in base.frontier],
    }
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(body, sort_keys=True).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make created, renamed or deleted entries of ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
