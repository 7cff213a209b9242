"""What one node's evidence log costs: append rate and latency with checkpoints running, the
signing cost per checkpoint, the two durability options, and how fast a chain verifies.

    .venv/bin/python bench/evidence_bench.py                    # 100,000 records
    .venv/bin/python bench/evidence_bench.py --records 2000     # smoke run

Everything runs in this process on a temporary directory (``--dir`` to choose where: the
disk is part of what is measured). See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from dataplane.evidence import checkpoint, merkle
from dataplane.evidence.log import EvidenceLog
from dataplane.evidence.proofs import verify_chain_files

YIELD_EVERY = 64
"""Appends between two yields to the event loop, where the fsync and checkpoint tasks run
(a node yields after every request; this is a busier loop than any node's)."""


def sample_fields(i: int) -> dict[str, Any]:
    """A served request's record as the pipeline writes it (same keys, typical sizes)."""
    return {
        "ts": 1_800_000_000.0 + i,
        "kind": "chat",
        "correlation_id": f"{i:032x}",
        "tenant_id": "t-acme",
        "api_key_id": "k-acme",
        "snapshot": {"version": 42, "sha256": "ab" * 32},
        "policy": {"id": "pol-acme", "version": 7},
        "routing": {
            "rule": "default",
            "strategy": "ordered",
            "reason": "first healthy candidate",
            "arm": "",
            "candidates": ["sim-fast", "sim-smart"],
            "dropped": [],
            "deferred": [],
            "order": ["sim-fast@d-sim-fast", "sim-smart@d-sim-smart"],
            "shadow": None,
            "skipped": [],
            "served_by": {"model": "sim-fast", "provider": "p-sim", "deployment": "d-sim-fast"},
            "attempts": [
                {
                    "model": "sim-fast",
                    "provider": "p-sim",
                    "deployment": "d-sim-fast",
                    "outcome": "ok",
                    "error": "",
                    "http_status": 200,
                    "duration_ms": 1.234,
                    "backoff_ms": 0,
                    "hedge": False,
                }
            ],
        },
        "governance": [],
        "timings": {"total_ms": 1.5, "dispatch_ms": 1.3, "first_chunk_ms": None},
        "usage": {
            "input_tokens": 12,
            "output_tokens": 30,
            "cached_input_tokens": 0,
            "cache_write_input_tokens": 0,
        },
        "cost": {"currency": "USD", "input_nanos": 1200, "output_nanos": 12000, "total_nanos": 13200},
        "outcome": {"code": "OK", "message": "", "error": ""},
        "request_sha256": "cd" * 32,
        "response_sha256": "ef" * 32,
    }


def pct(values: list[int], q: float) -> float:
    """The q-quantile of nanosecond samples, in microseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


async def append_run(
    path: Path, key: ec.EllipticCurvePrivateKey, records: int, every: int, interval: float
) -> tuple[float, list[int], int]:
    """(records/s, append latencies in ns, checkpoints signed)."""
    fields = [sample_fields(i) for i in range(min(records, 1024))]
    samples: list[int] = []
    async with EvidenceLog(
        path, "bench-node", signer=key, checkpoint_records=every, checkpoint_interval=interval
    ) as log:
        started = time.perf_counter()
        for i in range(records):
            t0 = time.perf_counter_ns()
            log.append(fields[i % len(fields)])
            samples.append(time.perf_counter_ns() - t0)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        elapsed = time.perf_counter() - started
    # Read once the log is closed: a fast run's appends outpace the signer thread, and the
    # checkpoint signed on close (covering every record) must be counted too.
    return records / elapsed, samples, log.checkpoints_signed


def signing_cost(key: ec.EllipticCurvePrivateKey, directory: Path, rounds: int) -> tuple[float, float]:
    """(p50 us of checkpoint.sign, p50 us of sign + append to the file + fsync)."""
    root = merkle.root([b"x"])
    sign = []
    for i in range(rounds):
        t0 = time.perf_counter_ns()
        checkpoint.sign(key, "bench-node/0", i + 1, root, 1_800_000_000)
        sign.append(time.perf_counter_ns() - t0)
    path = directory / "signing.checkpoints"
    stored = []
    for i in range(rounds):
        t0 = time.perf_counter_ns()
        note = checkpoint.sign(key, "bench-node/0", i + 1, root, 1_800_000_000)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, note + b"\n")
        os.fsync(fd)
        os.close(fd)
        stored.append(time.perf_counter_ns() - t0)
    return statistics.median(sign) / 1000, statistics.median(stored) / 1000


def durability_options(directory: Path, rounds: int) -> dict[str, tuple[float, float]]:
    """p50/p99 us of handing one record to the OS, and of doing so then waiting for it to be
    on disk (the least a group commit makes an answer wait for)."""
    line = json.dumps(sample_fields(0), separators=(",", ":")).encode() + b"\n"
    out: dict[str, tuple[float, float]] = {}
    for name, sync in (
        ("write() (b: chosen)", None),
        ("write()+fdatasync()", os.fdatasync),
        ("write()+fsync()", os.fsync),
    ):
        fd = os.open(directory / f"durability-{len(out)}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            os.write(fd, line)
            if sync is not None:
                sync(fd)
            samples.append(time.perf_counter_ns() - t0)
        os.close(fd)
        out[name] = (pct(samples, 0.5), pct(samples, 0.99))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000, help="records to append (default 100000)")
    parser.add_argument("--checkpoint-records", type=int, default=1000, help="checkpoint every N records")
    parser.add_argument("--checkpoint-ms", type=int, default=1000, help="and every T ms")
    parser.add_argument("--sync-rounds", type=int, default=300, help="samples of each durability option")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ns = parser.parse_args(argv)
    key = ec.generate_private_key(ec.SECP256R1())
    with tempfile.TemporaryDirectory(dir=ns.dir) as tmp:
        directory = Path(tmp)
        path = directory / "bench-node@0.jsonl"
        rate, samples, signed = asyncio.run(
            append_run(path, key, ns.records, ns.checkpoint_records, ns.checkpoint_ms / 1000)
        )
        size = path.stat().st_size
        print(f"records: {ns.records}  record bytes: {size / ns.records:.0f}  checkpoints signed: {signed}")
        print(f"append rate: {rate:,.0f} records/s (one event loop, checkpoints running)")
        print(f"append latency: p50 {pct(samples, 0.5):.1f} us  p99 {pct(samples, 0.99):.1f} us")
        sign_us, store_us = signing_cost(key, directory, max(20, min(200, ns.records // 100)))
        print(
            f"checkpoint: sign p50 {sign_us:.0f} us  sign+store+fsync p50 {store_us:.0f} us (worker thread)"
        )
        started = time.perf_counter()
        report = verify_chain_files(path, key.public_key())
        verify_s = time.perf_counter() - started
        print(
            f"verify_chain_files: {report.records / verify_s:,.0f} records/s "
            f"({report.records} records, {report.checkpoints} checkpoints, {verify_s:.2f} s)"
        )
        for name, (p50, p99) in durability_options(directory, ns.sync_rounds).items():
            print(f"durability {name}: p50 {p50:.1f} us  p99 {p99:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
