"""Findings against the edits earlier rules made to one text: which findings an earlier edit
claims (``unclaimed``), and the edits once a later editing rule's findings are added
(``merged``). Whole answers and requests (``enforce``) and streams (``stream``) both read
overlapping findings this way: the earlier rule's action stands."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dataplane.config.model import Finding


def unclaimed(
    spans: Sequence[Finding], claimed: list[tuple[int, int, str]], *, whole: bool = False
) -> list[Finding]:
    """The ``spans`` (sorted by start) that overlap none of the ``claimed`` edits (sorted,
    disjoint): one walk over both, as an overlap test per span against a bitmap of the
    text would find (an empty span or edit overlaps nothing). ``whole``: the spans that no
    one edit holds whole instead (what a later editing rule counts and edits, ``merged``)."""
    kept: list[Finding] = []
    j = 0
    m = len(claimed)
    previous = -1
    for s in spans:
        start, end = s.start, s.end
        if start < previous:
            j = 0  # not sorted after all: walk again from the first edit
        previous = start
        if whole:
            # The only edit that may hold the span is the first one ending at or after its end.
            while j < m and claimed[j][1] < end:
                j += 1
            if start < end and j < m and claimed[j][0] <= start:
                continue
        else:
            while j < m and (claimed[j][1] <= start or claimed[j][0] == claimed[j][1]):
                j += 1
            if start < end and j < m and claimed[j][0] < end:
                continue
        kept.append(s)
    return kept


def merged(
    claimed: list[tuple[int, int, str]], spans: Sequence[Finding], replacement: Callable[[int, int], str]
) -> list[tuple[int, int, str]]:
    """The ``claimed`` edits (sorted, disjoint) with an edit per span (sorted, disjoint) added;
    a span overlapping edits replaces them with one edit over the union, ``replacement(start,
    end)`` (else the part of the finding outside the earlier edits would reach the model, as
    ``jane@`` and ``.example`` around a redacted ``acme``). One walk over both."""
    out: list[tuple[int, int, str]] = []
    j = 0
    m = len(claimed)
    for s in sorted(spans, key=lambda s: s.start):
        low, high = s.start, s.end
        while j < m and claimed[j][1] <= low:
            out.append(claimed[j])
            j += 1
        if out and out[-1][1] > low:
            # The span overlaps the union made for the span before it.
            low, high = min(low, out[-1][0]), max(high, out.pop()[1])
        while j < m and claimed[j][0] < high:
            low, high = min(low, claimed[j][0]), max(high, claimed[j][1])
            j += 1
        out.append((low, high, replacement(low, high)))
    out += claimed[j:]
    return out
