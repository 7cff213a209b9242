"""RFC 9162 Merkle trees: the incremental root equals the whole computation, every proof
of every leaf and size verifies, and any change to a leaf, an index, a size, a root or a
proof hash is refused."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.evidence.merkle import (
    EMPTY_ROOT,
    ProofError,
    Tree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [hashlib.sha256(str(i).encode()).digest() for i in range(40)]
HASHES = [leaf_hash(x) for x in LEAVES]


def test_the_known_shapes() -> None:
    assert root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert root(LEAVES[:1]) == HASHES[0]
    assert root(LEAVES[:3]) == node_hash(node_hash(HASHES[0], HASHES[1]), HASHES[2])
    # RFC 9162 2.1.1: 5 leaves split 4 + 1.
    left = node_hash(node_hash(HASHES[0], HASHES[1]), node_hash(HASHES[2], HASHES[3]))
    assert root(LEAVES[:5]) == node_hash(left, HASHES[4])


def test_the_incremental_root_is_the_whole_root_at_every_size() -> None:
    tree = Tree()
    assert tree.root() == EMPTY_ROOT
    for n, leaf in enumerate(LEAVES, start=1):
        tree.append(leaf)
        assert tree.size == n
        assert tree.root() == root(LEAVES[:n])


def test_every_inclusion_proof_verifies_and_nothing_else_does() -> None:
    for size in range(1, 18):
        tree_root = root(LEAVES[:size])
        for index in range(size):
            proof = inclusion_proof(HASHES, index, size)
            verify_inclusion(LEAVES[index], index, size, proof, tree_root)
            other = (index + 1) % size
            if other != index:
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[other], index, size, proof, tree_root)
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[index], other, size, proof, tree_root)
            with pytest.raises(ProofError):
                verify_inclusion(LEAVES[index], index, size + 1, proof, root(LEAVES[: size + 1]))
            for i in range(len(proof)):
                bad = [*proof[:i], hashlib.sha256(proof[i]).digest(), *proof[i + 1 :]]
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[index], index, size, bad, tree_root)
            if proof:
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[index], index, size, proof[:-1], tree_root)
            with pytest.raises(ProofError):
                verify_inclusion(LEAVES[index], index, size, [*proof, HASHES[0]], tree_root)


def test_every_consistency_proof_verifies_and_a_rewritten_history_does_not() -> None:
    rewritten = [*LEAVES[:3], b"x" * 32, *LEAVES[4:]]
    for new in range(1, 20):
        for old in range(1, new + 1):
            proof = consistency_proof(HASHES, old, new)
            verify_consistency(old, new, root(LEAVES[:old]), root(LEAVES[:new]), proof)
            if old < new:
                # The old tree with leaf 3 changed: the same proof cannot reach both roots.
                if old > 3:
                    with pytest.raises(ProofError):
                        verify_consistency(old, new, root(rewritten[:old]), root(LEAVES[:new]), proof)
                with pytest.raises(ProofError):
                    verify_consistency(
                        old, new, root(LEAVES[:old]), root(rewritten[:new]) if new > 3 else b"z" * 32, proof
                    )
                for i in range(len(proof)):
                    bad = [*proof[:i], hashlib.sha256(proof[i]).digest(), *proof[i + 1 :]]
                    with pytest.raises(ProofError):
                        verify_consistency(old, new, root(LEAVES[:old]), root(LEAVES[:new]), bad)
    with pytest.raises(ProofError, match="empty"):
        verify_consistency(4, 8, root(LEAVES[:4]), root(LEAVES[:8]), [])
    with pytest.raises(ProofError, match="two different roots"):
        verify_consistency(5, 5, root(LEAVES[:5]), root(rewritten[:5]), [])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.data())
def test_random_sizes(size: int, data: st.DataObject) -> None:
    leaves = [hashlib.sha256(b"r%d" % i).digest() for i in range(size)]
    hashes = [leaf_hash(x) for x in leaves]
    tree = Tree()
    for leaf in leaves:
        tree.append(leaf)
    assert tree.root() == root(leaves)
    index = data.draw(st.integers(0, size - 1))
    verify_inclusion(leaves[index], index, size, inclusion_proof(hashes, index, size), tree.root())
    old = data.draw(st.integers(1, size))
    verify_consistency(old, size, root(leaves[:old]), tree.root(), consistency_proof(hashes, old, size))
