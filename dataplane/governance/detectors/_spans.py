"""Turning candidate findings into what the protocol promises: sorted, non-overlapping spans."""

from __future__ import annotations

from collections.abc import Iterable

from dataplane.governance.detect import Span


def leftmost_longest(candidates: Iterable[Span]) -> list[Span]:
    """The leftmost candidate wins; of those starting together, the longest; overlaps are dropped."""
    chosen: list[Span] = []
    end = -1
    for span in sorted(candidates, key=lambda s: (s.start, -s.end)):
        if span.start >= end and span.end > span.start:
            chosen.append(span)
            end = span.end
    return chosen
