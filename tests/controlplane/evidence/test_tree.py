"""A chain's stored tree extended in C (``_rows.extend``) is the tree ``merkle.Tree`` builds one
leaf at a time: the same size, root and compact range at every size, however the leaves are
split into calls, and continued from a stored compact range."""

from __future__ import annotations

import hashlib

import pytest

from controlplane.evidence import native
from controlplane.evidence.tree import StoredTree
from dataplane.evidence.merkle import Tree, root

LEAVES = [hashlib.sha256(str(i).encode()).digest() for i in range(2100)]


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 8, 1023, 1024, 1025, 2047, 2100])
def test_extending_at_once_builds_the_tree_appending_does(size: int) -> None:
    assert native.rows is not None  # the suite runs it compiled (tests/signalbox/test_compiled.py)
    one_by_one = Tree()
    for leaf in LEAVES[:size]:
        one_by_one.append(leaf)
    for cut in {0, size // 3, size}:
        extended = StoredTree()
        extended.extend(LEAVES[:cut])
        extended.extend(LEAVES[cut:size])
        assert extended.size == size
        assert extended.frontier() == one_by_one.frontier()
        assert extended.root() == one_by_one.root() == root(LEAVES[:size])
        pure = Tree()  # the twin a build without the extension runs
        pure.extend(LEAVES[:cut])
        pure.extend(LEAVES[cut:size])
        assert (pure.size, pure.frontier()) == (size, one_by_one.frontier())
        continued = StoredTree.from_bytes(extended.to_bytes(), size)
        continued.extend(LEAVES[size : size + 77])
        assert continued.root() == root(LEAVES[: size + 77])


def test_a_leaf_or_stored_root_of_the_wrong_size_is_refused_not_read_past() -> None:
    tree = StoredTree()
    with pytest.raises(ValueError, match="32-byte record hash"):
        tree.extend([b"short"])
    tree.extend(LEAVES[:1])
    tree._stack[0] = (0, b"short")
    with pytest.raises(ValueError, match="subtree root is 32 bytes"):
        tree.extend(LEAVES[1:2])
