"""Multiproofs: for any tree and any selection of leaves, the proof leads to the tree's root
(the same root inclusion proofs lead to), the streaming prover makes the same proof, and any
change to a leaf, an index, the size or a proof hash, or a hash too many or too few, does not."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.evidence.merkle import (
    EMPTY_ROOT,
    MultiproofBuilder,
    ProofError,
    Tree,
    inclusion_proof,
    leaf_hash,
    multiproof,
    multiproof_from_stream,
    multiproof_ranges,
    root,
    root_from_multiproof,
    verify_inclusion,
)

LEAVES = [hashlib.sha256(str(i).encode()).digest() for i in range(300)]
HASHES = [leaf_hash(x) for x in LEAVES]


@st.composite
def selections(draw: st.DrawFn) -> tuple[int, list[int]]:
    size = draw(st.integers(min_value=1, max_value=len(LEAVES)))
    chosen = draw(st.sets(st.integers(min_value=0, max_value=size - 1), max_size=size))
    return size, sorted(chosen)


@settings(max_examples=300, deadline=None)
@given(selections())
def test_any_selection_proves_the_root_inclusion_proofs_prove(case: tuple[int, list[int]]) -> None:
    size, chosen = case
    expected = root(LEAVES[:size])
    proof = multiproof(HASHES, chosen, size)
    assert root_from_multiproof([(i, HASHES[i]) for i in chosen], size, proof) == expected
    for i in chosen:  # the root each selected leaf's own inclusion proof leads to
        verify_inclusion(LEAVES[i], i, size, inclusion_proof(HASHES, i, size), expected)
    assert multiproof_from_stream(multiproof_ranges(chosen, size), HASHES[:size]) == proof


@settings(max_examples=200, deadline=None)
@given(selections(), st.data())
def test_any_change_is_refused(case: tuple[int, list[int]], data: st.DataObject) -> None:
    size, chosen = case
    expected = root(LEAVES[:size])
    proof = multiproof(HASHES, chosen, size)
    leaves = [(i, HASHES[i]) for i in chosen]

    def refused(leaves: list[tuple[int, bytes]], size: int, proof: list[bytes]) -> bool:
        try:
            return root_from_multiproof(leaves, size, proof) != expected
        except ProofError:
            return True

    if leaves:
        k = data.draw(st.integers(0, len(leaves) - 1))
        edited = list(leaves)
        edited[k] = (edited[k][0], hashlib.sha256(edited[k][1]).digest())
        assert refused(edited, size, proof)
        moved = [i for i in range(size) if i not in chosen]
        if moved:
            edited = list(leaves)
            edited[k] = (data.draw(st.sampled_from(moved)), edited[k][1])
            assert refused(sorted(edited), size, proof)
        assert refused(leaves[:k] + leaves[k + 1 :], size, proof)  # a selected leaf left out
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        assert refused(leaves, size, [*proof[:k], b"\x00" * 32, *proof[k + 1 :]])
        assert refused(leaves, size, proof[:-1])
    assert refused(leaves, size, [*proof, b"\x00" * 32])
    # The size is not among what is changed: a proof hash can stand for a whole subtree, so
    # another size can lead to the same root; the signed checkpoint is what binds the size.


def test_the_edges() -> None:
    assert multiproof(HASHES, [], 0) == []
    assert root_from_multiproof([], 0, []) == EMPTY_ROOT
    assert multiproof(HASHES, [], 5) == [root(LEAVES[:5])]  # nothing selected: the root itself
    assert multiproof(HASHES, list(range(7)), 7) == []  # everything selected: nothing to add
    for bad in ([3, 3], [4, 2], [7], [-1]):
        with pytest.raises(ProofError, match="ascending, distinct and below"):
            multiproof_ranges(bad, 7)
    with pytest.raises(ProofError, match="ended before"):
        multiproof_from_stream(multiproof_ranges([0], 8), HASHES[:5])


# ---- a pruned prefix: the prover starts from its compact range ----


@st.composite
def pruned_selections(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    """(size, pruned prefix P, selected leaves all at or after P)."""
    size = draw(st.integers(min_value=0, max_value=len(LEAVES)))
    pruned = draw(st.integers(min_value=0, max_value=size))
    chosen = draw(
        st.sets(st.integers(min_value=pruned, max_value=max(pruned, size - 1)), max_size=size - pruned)
    )
    return size, pruned, sorted(c for c in chosen if c < size)


def compact_range(size: int) -> list[tuple[int, bytes]]:
    tree = Tree()
    for digest in HASHES[:size]:
        tree.append_hashed(digest)
    return list(tree._stack)


@settings(max_examples=400, deadline=None)
@given(pruned_selections())
def test_a_proof_from_a_pruned_prefix_is_the_proof_from_every_leaf(case: tuple[int, int, list[int]]) -> None:
    size, pruned, chosen = case
    ranges = multiproof_ranges(chosen, size)
    proof = multiproof_from_stream(ranges, HASHES[pruned:size], prefix=compact_range(pruned))
    assert proof == multiproof(HASHES, chosen, size)
    assert root_from_multiproof([(i, HASHES[i]) for i in chosen], size, proof) == root(LEAVES[:size])


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=200), st.data())
def test_a_selected_leaf_in_the_pruned_prefix_cannot_be_proven(pruned: int, data: st.DataObject) -> None:
    size = data.draw(st.integers(min_value=pruned, max_value=len(LEAVES)))
    below = data.draw(st.integers(min_value=0, max_value=pruned - 1))
    with pytest.raises(ProofError, match=rf"only leaves from {pruned} on can be proven"):
        MultiproofBuilder(multiproof_ranges([below], size), prefix=compact_range(pruned))


def test_a_compact_range_out_of_order_is_refused() -> None:
    with pytest.raises(ProofError, match="tallest first"):
        MultiproofBuilder([(0, 8)], prefix=list(reversed(compact_range(6))))
    with pytest.raises(ProofError, match="32-byte"):
        MultiproofBuilder([(0, 8)], prefix=[(2, b"short")])
    with pytest.raises(ProofError, match="the leaves ended before subtree"):
        multiproof_from_stream([(0, 8)], HASHES[6:7], prefix=compact_range(6))
