"""The node "built with evidence off", for ``bench/evidence_overhead.py`` only.

On ``PYTHONPATH`` with ``SIGNALBOX_BENCH_EVIDENCE_OFF=1``, Python imports this module at
start-up and it replaces the pipeline's one evidence step (``Pipeline._record``: gathering the
record's fields, canonical JSON, SHA-256, the write to the OS, the Merkle leaf) with
nothing, so the only difference between the two nodes the benchmark compares is the
evidence path. Never on a real node's path: a node without evidence breaks the product's
first guarantee.
"""

from __future__ import annotations

import os

if os.environ.get("SIGNALBOX_BENCH_EVIDENCE_OFF") == "1":
    from typing import Any

    from dataplane.pipeline import steps

    def _no_record(self: Any, trace: Any, outcome: Any) -> str:
        trace.recorded = "evidence-off"
        return "evidence-off"

    steps.Pipeline._record = _no_record  # type: ignore[method-assign]
