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
    ProofError,
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
