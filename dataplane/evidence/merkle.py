"""Merkle trees over an evidence chain, as RFC 9162 (Certificate Transparency 2.0, the same
hashing as RFC 6962) defines them: inclusion proofs and consistency proofs.

A chain's records are the leaves, in ``seq`` order; a record's leaf is its 32-byte record
hash (``log.record_hash``, hex-decoded). So a tree of size ``n`` commits to the first
``n`` records exactly, a signed checkpoint (``checkpoint``) of ``(size, root)`` commits to
every byte of them, and

- an *inclusion proof* shows one record is in a checkpoint (log2(n) hashes), and
- a *consistency proof* shows a later checkpoint extends an earlier one (append-only:
  nothing before it was changed, removed or reordered).

``Tree`` is incremental: appending keeps only the roots of the perfect subtrees that make up
the current size (at most log2(n) of them), so the root is O(log n) per record. Proofs need
the leaves themselves (``inclusion_proof``/``consistency_proof`` take the leaf hashes).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""The root of the empty tree (RFC 9162 2.1.1)."""


class ProofError(ValueError):
    """A proof that does not verify, or a request for one that cannot exist."""


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH of ``leaves`` (leaf data, not yet hashed), computed whole."""
    return _mth([leaf_hash(x) for x in leaves])


def _mth(hashes: Sequence[bytes]) -> bytes:
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = _split(n)
    return node_hash(_mth(hashes[:k]), _mth(hashes[k:]))


class Tree:
    """An append-only Merkle tree kept as the roots of its perfect subtrees."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (height, subtree root), tallest first

    def append(self, leaf: bytes) -> None:
        """Add the leaf data ``leaf`` (a record hash) as leaf number ``size``."""
        self.append_hashed(leaf_hash(leaf))

    def extend(self, leaves: Iterable[bytes]) -> None:
        """``append`` each of ``leaves`` in order."""
        for leaf in leaves:
            self.append_hashed(leaf_hash(leaf))

    def append_hashed(self, digest: bytes) -> None:
        """Add a leaf already hashed (``leaf_hash``) as leaf number ``size``."""
        height = 0
        while self._stack and self._stack[-1][0] == height:
            _, left = self._stack.pop()
            digest = node_hash(left, digest)
            height += 1
        self._stack.append((height, digest))
        self.size += 1

    @classmethod
    def from_frontier(cls, size: int, frontier: Sequence[bytes]) -> Tree:
        """The tree of ``size`` leaves continued from its compact range (RFC 9162's
        "frontier": the roots of its perfect subtrees, tallest first, one per bit set in
        ``size``); ``ProofError`` when the count or a hash's length does not fit."""
        heights = [h for h in range(size.bit_length() - 1, -1, -1) if size >> h & 1]
        if size < 0 or len(frontier) != len(heights) or any(len(d) != 32 for d in frontier):
            raise ProofError(f"a tree of size {size} has {len(heights)} 32-byte subtree roots")
        tree = cls()
        tree.size = size
        tree._stack = list(zip(heights, frontier, strict=True))
        return tree

    def frontier(self) -> list[bytes]:
        """The roots of the perfect subtrees making up the tree, tallest first: with
        ``size`` they are all that is needed to keep appending (``from_frontier``)."""
        return [digest for _, digest in self._stack]

    def root(self) -> bytes:
        """The root of the first ``size`` leaves (the subtrees folded right to left)."""
        if not self._stack:
            return EMPTY_ROOT
        digest = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            digest = node_hash(left, digest)
        return digest


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of the first ``size`` leaves
    (``leaf_hashes``: hashed leaves, at least ``size`` of them)."""
    if not 0 <= index < size <= len(leaf_hashes):
        raise ProofError(f"no leaf {index} in a tree of size {size}")
    return _path(index, leaf_hashes[:size])


def _path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    n = len(hashes)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, hashes[:k]), _mth(hashes[k:])]
    return [*_path(m - k, hashes[k:]), _mth(hashes[:k])]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> None:
    """Check that ``leaf`` (leaf data) is leaf ``index`` of the tree ``(size, root_hash)``
    (RFC 9162 2.1.3.2); ``ProofError`` otherwise."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is outside a tree of size {size}")
    fn, sn = index, size - 1
    digest = leaf_hash(leaf)
    for sibling in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            digest = node_hash(sibling, digest)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            digest = node_hash(digest, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    if digest != root_hash:
        raise ProofError(f"leaf {index} is not in the tree of size {size} with that root")


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """The proof that the tree of the first ``new_size`` leaves extends the one of the first
    ``old_size`` (RFC 9162 2.1.4.1)."""
    if not 0 < old_size <= new_size <= len(leaf_hashes):
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size == new_size:
        return []
    return _subproof(old_size, leaf_hashes[:new_size], True)


def _subproof(m: int, hashes: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if complete else [_mth(hashes)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, hashes[:k], complete), _mth(hashes[k:])]
    return [*_subproof(m - k, hashes[k:], False), _mth(hashes[:k])]


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that ``(new_size, new_root)`` extends ``(old_size, old_root)`` (RFC 9162
    2.1.4.2); ``ProofError`` otherwise."""
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency from size {old_size} to size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for size {old_size}")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than needed")
    if fr != old_root:
        raise ProofError(f"the proof does not lead to the root of size {old_size}")
    if sr != new_root:
        raise ProofError(f"the proof does not lead to the root of size {new_size}")


# ---- multiproofs (evidence packs) ----
#
# One proof for many leaves of one tree: the tree of ``size`` leaves is walked exactly as
# ``_mth`` splits it; a subtree holding a selected leaf is descended into, a selected leaf
# is its own hash, and a subtree holding none is one hash of the proof, in left-to-right
# order. Selecting every leaf makes the proof empty; selecting none makes it the root.
# A proof hash may stand for a whole subtree, so a proof does not bind the tree's size by
# itself: the verifier takes the size from the signed checkpoint it compares the root with.


def multiproof_ranges(selected: Sequence[int], size: int) -> list[tuple[int, int]]:
    """The subtrees ``[lo, hi)`` without a selected leaf whose roots a multiproof of the
    ``selected`` leaves (ascending, distinct indices below ``size``) carries, in order."""
    _check_selected(selected, size)
    ranges: list[tuple[int, int]] = []

    def walk(lo: int, hi: int, a: int, b: int) -> None:
        if a == b:
            ranges.append((lo, hi))
        elif hi - lo > 1 and b - a < hi - lo:
            mid = lo + _split(hi - lo)
            m = bisect_left(selected, mid, a, b)
            walk(lo, mid, a, m)
            walk(mid, hi, m, b)

    if size:
        walk(0, size, 0, len(selected))
    return ranges


def _check_selected(selected: Sequence[int], size: int) -> None:
    previous = -1
    for index in selected:
        if not previous < index < size:
            raise ProofError(
                f"leaf {index}: selected leaves must be ascending, distinct and below the size {size}"
            )
        previous = index


def multiproof(leaf_hashes: Sequence[bytes], selected: Sequence[int], size: int) -> list[bytes]:
    """The multiproof of the ``selected`` leaves in the tree of the first ``size`` of
    ``leaf_hashes`` (hashed leaves)."""
    if size > len(leaf_hashes):
        raise ProofError(f"a tree of size {size} needs {size} leaves, not {len(leaf_hashes)}")
    return [_mth(leaf_hashes[lo:hi]) for lo, hi in multiproof_ranges(selected, size)]


class MultiproofBuilder:
    """The roots of ``ranges`` (``multiproof_ranges``) from hashed leaves added in index
    order, each hashed once: a prover that never holds the tree, only one range's stack.

    ``prefix``: the compact range of the first P leaves (``(height, root)`` of each perfect
    subtree, tallest first, as ``Tree`` keeps them) when those leaves are gone (pruned);
    the leaves added then start at index P. No selected leaf may be below P: a range that
    starts below P then covers a run of the prefix's subtrees (aligned blocks of P's binary
    decomposition), so its stack starts as those subtrees and the leaves after P continue it.
    """

    def __init__(self, ranges: Sequence[tuple[int, int]], prefix: Sequence[tuple[int, bytes]] = ()) -> None:
        self._ranges = ranges
        self._next = 0
        self._tree = Tree()
        self.proof: list[bytes] = []
        self._index = self._seed(prefix)

    def _seed(self, prefix: Sequence[tuple[int, bytes]]) -> int:
        """Take the ranges that start in the prefix; the index of the first leaf to add."""
        starts: list[int] = []
        start = 0
        for height, digest in prefix:
            if len(digest) != 32 or (starts and height >= prefix[len(starts) - 1][0]):
                raise ProofError("a compact range is 32-byte subtree roots, tallest first, heights distinct")
            starts.append(start)
            start += 1 << height
        size = start
        covered = 0
        while self._next < len(self._ranges) and self._ranges[self._next][0] < size:
            lo, hi = self._ranges[self._next]
            end = min(hi, size)
            if lo != covered or lo not in starts or (end < size and end not in starts):
                raise ProofError(
                    f"leaf {covered} is selected or subtree [{lo}, {hi}) is not aligned with the "
                    f"{size} pruned leaves' subtrees: only leaves from {size} on can be proven"
                )
            first = starts.index(lo)
            last = starts.index(end) if end < size else len(prefix)
            self._tree = Tree.from_frontier(end - lo, [digest for _, digest in prefix[first:last]])
            covered = end
            if hi > size:
                break
            self.proof.append(self._tree.root())
            self._tree = Tree()
            self._next += 1
        if covered != size:
            raise ProofError(f"leaf {covered} is selected: only leaves from {size} on can be proven")
        return size

    def add(self, digest: bytes) -> None:
        """Leaf number ``index`` (counting the calls, from the prefix's size), hashed."""
        index, self._index = self._index, self._index + 1
        if self._next == len(self._ranges):
            return
        lo, hi = self._ranges[self._next]
        if index < lo:
            return
        self._tree.append_hashed(digest)
        if index == hi - 1:
            self.proof.append(self._tree.root())
            self._tree = Tree()
            self._next += 1

    def finish(self) -> list[bytes]:
        """The proof; ``ProofError`` when fewer leaves came than the ranges need."""
        if self._next < len(self._ranges):
            lo, hi = self._ranges[self._next]
            raise ProofError(f"the leaves ended before subtree [{lo}, {hi})")
        return self.proof


def multiproof_from_stream(
    ranges: Sequence[tuple[int, int]],
    leaf_hashes: Iterable[bytes],
    prefix: Sequence[tuple[int, bytes]] = (),
) -> list[bytes]:
    """``MultiproofBuilder`` over hashed leaves given in index order (from the prefix's size)."""
    builder = MultiproofBuilder(ranges, prefix)
    for digest in leaf_hashes:
        builder.add(digest)
    return builder.finish()


def root_from_multiproof(leaves: Sequence[tuple[int, bytes]], size: int, proof: Sequence[bytes]) -> bytes:
    """The root that the selected ``leaves`` (``(index, hashed leaf)``, ascending) and the
    multiproof ``proof`` make for a tree of ``size`` leaves; ``ProofError`` when the proof
    has too few or too many hashes or an index is out of order or range."""
    indices = [index for index, _ in leaves]
    _check_selected(indices, size)
    if size == 0:
        if proof:
            raise ProofError("the empty tree has no proof")
        return EMPTY_ROOT
    hashes = [digest for _, digest in leaves]
    taken = 0

    def walk(lo: int, hi: int, a: int, b: int) -> bytes:
        nonlocal taken
        if a == b:
            if taken == len(proof):
                raise ProofError(f"the multiproof is too short: no hash for subtree [{lo}, {hi})")
            taken += 1
            return proof[taken - 1]
        if b - a == hi - lo:  # every leaf selected: hashed bottom-up, no descent
            tree = Tree()
            for digest in hashes[a:b]:
                tree.append_hashed(digest)
            return tree.root()
        mid = lo + _split(hi - lo)
        m = bisect_left(indices, mid, a, b)
        return node_hash(walk(lo, mid, a, m), walk(mid, hi, m, b))

    result = walk(0, size, 0, len(leaves))
    if taken != len(proof):
        raise ProofError(f"the multiproof is too long: {len(proof) - taken} hashes left over")
    return result
