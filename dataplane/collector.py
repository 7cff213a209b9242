"""The cyclic garbage collector's pace in a serving worker.

CPython frees almost everything by reference counting; the cyclic collector exists for
reference cycles. It starts a young collection when allocations of container objects
outnumber frees by the generation-0 threshold (700 by default). A worker holds the objects
of every request in flight: at 64 concurrent requests they outnumber 700 most of the time,
so young collections ran every few requests, each promoting the objects of the requests in
flight to older generations, whose growth then triggered full collections of the whole heap
(the snapshot's objects included, ~35 ms each). Measured with ``bench/http_cpu.py
--connections 64`` (2026-12-02): ~3,500 young, ~300 middle and ~25 full collections in 8 s,
about an eighth of the worker's CPU, for ~2,500 objects of actual garbage (none of them the
node's: a request leaves no cycle behind, ``tests/dataplane/http/test_no_reference_cycles.py``).

With the threshold above what the requests in flight hold (~50-100 objects each), a young
collection runs only when something accumulates: real cyclic garbage, or the heap growing
(a snapshot applied). The other generations keep their default ratios. A reference cycle
made per request would now live longer before it is freed, which is why the tests above
hold the request paths (served, streamed, refused, failed upstream, a client or an upstream
leaving midway, connections closed by either side) free of cycles.

Only the ``signalbox dataplane serve`` process sets this (``serve_cli``): the collector is
the whole process's, and a node embedded in another program (the tests) keeps its host's.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000
"""Generation 0's threshold in a serving worker: above the objects of a few hundred requests
in flight (``bench/http_cpu.py`` at 64 connections: 2,000-6,500 at any moment)."""


def pace_for_serving() -> tuple[int, int, int]:
    """Set the serving threshold (``YOUNG_THRESHOLD``); the thresholds before."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, before[1], before[2])
    return before
