"""``spent_since``: what a node's own evidence says was spent, read defensively (the recount
of an air-gapped node's lost budgets file)."""

from __future__ import annotations

import time
from pathlib import Path

from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.spend import spent_since


async def test_costs_since_a_time_per_tenant_and_key_skipping_what_is_not_a_record(tmp_path: Path) -> None:
    now = time.time()
    path = log_path(tmp_path, "n1")
    async with EvidenceLog(path, "n1") as log:
        for ts, tenant, key, cost in (
            (now - 7200, "t-a", "k-1", 500),  # before ``since``
            (now, "t-a", "k-1", 1_000),
            (now, "t-a", "", 2_000),
            (now, "t-b", "k-9", 0),  # cost nothing
            (now, "", "", 9_999),  # refused before authentication: no tenant
            (now, "t-b", "k-9", 2**70),  # hostile: clamped
        ):
            log.append({"ts": ts, "tenant_id": tenant, "api_key_id": key, "cost": {"total_nanos": cost}})
    with path.open("ab") as f:
        f.write(b'{"torn": \n' + b"not json at all\n" + b'{"ts": 1')  # torn tail, no newline
    found = sorted(spent_since(tmp_path, now - 3600))
    assert [(t, k, c) for t, k, _, c in found] == [
        ("t-a", "", 2_000),
        ("t-a", "k-1", 1_000),
        ("t-b", "k-9", 2**63 - 1),
    ]


def test_a_chain_that_is_not_a_regular_file_is_not_read(tmp_path: Path) -> None:
    path = log_path(tmp_path, "n1")
    path.parent.mkdir(parents=True)
    path.symlink_to("/dev/zero")  # endless bytes and no newline: must not be read into memory
    assert list(spent_since(tmp_path, 0)) == []
