"""What a node's own evidence says was spent: the costs of its records since a time.

An air-gapped node counts its budgets in ``quota/budgets.json``; when that file is gone or
unreadable, the spend of the current day and month is recounted from here (the records are
the node's own account of every request, written before each answer). Read with the typed
field reader (``fields``), which skips everything but the few members needed.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from dataplane.evidence import segments
from dataplane.evidence.fields import read_fields
from dataplane.evidence.log import chain_files

INT64_MAX = 2**63 - 1
MAX_LINE_BYTES = 16 * 1024 * 1024
"""Longer than any record a node writes: past it, the rest of a segment is not read."""

log = logging.getLogger("signalbox.dataplane.evidence")


def spent_since(data_dir: Path, since: float) -> Iterator[tuple[str, str, float, int]]:
    """(tenant id, API key id, time, nano-USD) of every record of every chain of the node at
    ``data_dir`` at or after ``since`` (unix seconds) that cost something. A line that does not
    read as a record (torn, hand-edited) is skipped: ``evidence verify`` is where it is named."""
    for chain in chain_files(data_dir):
        base = segments.read_base(chain)
        for segment in segments.live_segments(chain, base.seq if base else 0):
            with open(segment.path, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    log.warning("evidence spend: %s is not a regular file; not read", segment.path)
                    continue
                while line := f.readline(MAX_LINE_BYTES):
                    if not line.endswith(b"\n"):
                        if len(line) >= MAX_LINE_BYTES:
                            log.warning("evidence spend: %s has a line over %d bytes; the rest is not read",
                                        segment.path, MAX_LINE_BYTES)  # fmt: skip
                        break
                    fields = read_fields(line)
                    if fields is None or fields.ts < since or fields.cost is None or not fields.tenant_id:
                        continue
                    cost = fields.cost.total_nanos
                    if cost is None or cost <= 0:
                        continue
                    yield fields.tenant_id, fields.api_key_id or "", fields.ts, min(cost, INT64_MAX)
