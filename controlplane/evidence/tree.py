"""A chain's Merkle tree kept between batches as bytes (``evidence_chains.tree``).

``merkle.Tree`` holds the roots of its perfect subtrees; at most log2(n) of them, so a chain
of a billion records is 30 entries (1 byte of height + 32 of root each). Checking a
checkpoint of the newest size costs nothing more than the appends themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from controlplane.evidence.native import rows as _rows
from dataplane.evidence.merkle import Tree

_ENTRY = 33

FRONTIER_EVERY = 1024
"""Ingest stores the chain's compact range at every record whose seq is a multiple of this
(``evidence_frontiers``, about 1 KB per this many records): the tree of any size stored is
that of the nearest one before it extended by fewer than this many leaf hashes."""


def frontier(tree: Tree) -> bytes:
    """``tree``'s perfect subtrees (its compact range) as bytes: what ``compact_range`` reads."""
    return b"".join(bytes([height]) + digest for height, digest in tree._stack)


def compact_range(data: bytes) -> list[tuple[int, bytes]]:
    """The ``(height, root)`` subtrees, tallest first, ``frontier`` wrote as ``data``."""
    if len(data) % _ENTRY:
        raise ValueError(f"a stored tree is a multiple of {_ENTRY} bytes, not {len(data)}")
    return [(data[i], data[i + 1 : i + _ENTRY]) for i in range(0, len(data), _ENTRY)]


class StoredTree(Tree):
    """``merkle.Tree`` that can be saved and restored, and extended in C (``_rows.extend``:
    ingest appends every record shipped) when the package was built with it."""

    def extend(self, leaves: Iterable[bytes]) -> None:
        if _rows is None:
            super().extend(leaves)
            return
        self.size += _rows.extend(
            self._stack, leaves if type(leaves) is list else list(leaves), hashlib.sha256
        )

    def to_bytes(self) -> bytes:
        return frontier(self)

    @classmethod
    def from_bytes(cls, data: bytes, size: int) -> StoredTree:
        """The tree of ``size`` leaves whose subtree roots ``to_bytes`` wrote as ``data``."""
        tree = cls()
        tree._stack = compact_range(data)
        if sum(1 << height for height, _ in tree._stack) != size:
            raise ValueError(f"the stored tree does not have {size} leaves")
        tree.size = size
        return tree
