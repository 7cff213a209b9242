"""Evidence ingest: records per second the control plane verifies, commits and acknowledges
over the real EvidenceService stream, and the latency of a batch's ACK.

    .venv/bin/python bench/evidence_ingest.py                         # 4 nodes x 50,000 records, batches of 2,000
    .venv/bin/python bench/evidence_ingest.py --nodes 1 --records 5000 --batch 500   # smoke run

A control plane runs in this process on embedded PostgreSQL (a fresh data dir). Each node is
enrolled for real (token, key, CSR, certificate) and ships over its own mutual-TLS stream on
the node port, exactly as ``dataplane.evidence.shipper`` does: one batch in flight per chain,
the next sent when the previous one is acknowledged (after its commit). The records are
real: written beforehand by the node's ``EvidenceLog`` with request-like fields (~1,160 bytes
each), so the control plane parses each line, recomputes its hash, links it and COPYs it.
The node side runs in a child process (``--ship-only``), so this process's CPU is the
control plane's. Printed: records/s over the whole run (first batch sent to last ACK), and
p50/p99/max of the time from a batch sent to its ACK.
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
from datetime import timedelta
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlplane.app import ControlPlane, ControlPlaneSettings
from controlplane.services.base import Caller
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.segments import DEFAULT_SEGMENT_BYTES, all_segments
from dataplane.identity import IdentityFiles, enroll
from signalbox.api.evidence.v1 import evidence_pb2, evidence_pb2_grpc
from signalbox.tls import ClientTls, aio_channel


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def write_records(data_dir: Path, node_id: str, count: int, segment_bytes: int) -> None:
    async with EvidenceLog(log_path(data_dir, node_id), node_id, segment_bytes=segment_bytes) as log:
        for i in range(count):
            log.append(
                {
                    "ts": time.time(),
                    "kind": "infer",
                    "correlation_id": f"{node_id}-{i:08d}",
                    "tenant_id": f"tenant-{i % 50}",
                    "api_key_id": f"key-{i % 500}",
                    "snapshot": {"version": 12, "sha256": "ab" * 32},
                    "policy": {"id": "p-1", "version": 3},
                    "routing": {
                        "rule": "default",
                        "strategy": "cost",
                        "candidates": ["small", "large"],
                        "served_by": {"model": "small", "provider": "sim", "deployment": "sim/small-v1"},
                        "attempts": [
                            {"model": "small", "provider": "sim", "outcome": "ok", "duration_ms": 12.5}
                        ],
                    },
                    "timings": {"total_ms": 13.1, "dispatch_ms": 12.6, "first_chunk_ms": None},
                    "usage": {"input_tokens": 12, "output_tokens": 40},
                    "cost": {"currency": "USD", "input_nanos": 120, "output_nanos": 800, "total_nanos": 920},
                    "outcome": {
                        "code": "OK" if i % 10 else "PERMISSION_DENIED",
                        "message": "",
                        "error": None,
                    },
                    "request_sha256": "cd" * 32,
                    "response_sha256": "ef" * 32,
                }
            )


def cpu_times(root: Path) -> dict[str, float]:
    """CPU seconds so far of the control plane (this process and its worker processes, not
    the shipping child) and of PostgreSQL (the server under ``root`` and its backends)."""
    me = psutil.Process()
    workers = [c for c in me.children(recursive=True) if "--ship-only" not in " ".join(c.cmdline())]
    postgres = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and "postgres" in cmdline[0] and any(str(root) in part for part in cmdline):
            postgres = [proc, *proc.children(recursive=True)]
            break

    def total(procs: list[psutil.Process]) -> float:
        seconds = 0.0
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            seconds += t.user + t.system
        return seconds

    return {
        "control plane (process + workers)": total([me, *workers]),
        "  of which its parsing processes": total(workers),
        "PostgreSQL (server + backends)": total(postgres),
    }


async def ship(node_address: str, root: Path, node_id: str, batch: int) -> tuple[int, list[float]]:
    """Ship one node's log as the shipper does (one batch in flight); records and ACK latencies."""
    # Every segment, in order: a node's log rolls over at 64 MiB (~57,000 of these records).
    lines = [
        line
        for segment in all_segments(log_path(root / node_id, node_id))
        for line in segment.path.read_bytes().splitlines(keepends=True)
    ]
    tls = IdentityFiles(root / node_id).client_tls()
    latencies: list[float] = []
    outbox: asyncio.Queue[evidence_pb2.ShipBatch | None] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        while (b := await outbox.get()) is not None:
            yield b

    async with aio_channel(
        node_address, tls, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        call = evidence_pb2_grpc.EvidenceServiceStub(channel).Ship(requests())
        for start in range(0, len(lines), batch):
            sent = time.perf_counter()
            outbox.put_nowait(
                evidence_pb2.ShipBatch(chain_id=f"{node_id}/0", records=lines[start : start + batch])
            )
            ack = await call.read()
            latencies.append(time.perf_counter() - sent)
            if ack.HasField("error") or ack.head_seq != min(len(lines), start + batch):
                raise SystemExit(f"{node_id}: unexpected answer {ack}")
        outbox.put_nowait(None)
    return len(lines), latencies


async def ship_only(args: argparse.Namespace) -> None:
    root = Path(args.root)
    started = time.perf_counter()
    cpu = time.process_time()
    results = await asyncio.gather(
        *(ship(args.node_address, root, f"bench-{n}", args.batch) for n in range(args.nodes))
    )
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "elapsed": elapsed,
                "cpu": time.process_time() - cpu,
                "records": sum(r[0] for r in results),
                "lat": [x for r in results for x in r[1]],
            }
        )
    )


async def main(args: argparse.Namespace) -> None:
    tmp = tempfile.TemporaryDirectory(prefix="evidence-bench-")
    # Traversable: embedded PostgreSQL runs as its own user when we are root.
    os.chmod(tmp.name, 0o711)
    with tmp:
        await run(args, Path(tmp.name))


async def run(args: argparse.Namespace, root: Path) -> None:

    def accept(note: str, node_id: str) -> None:
        """The bench ships no checkpoints."""

    settings = ControlPlaneSettings(
        listen="127.0.0.1:0",
        node_listen="127.0.0.1:0",
        data_dir=root,
        max_message_bytes=64 << 20,
        evidence_workers=args.workers,
    )
    async with ControlPlane(settings, verify_checkpoint_signature=accept) as cp:
        assert cp.identities is not None
        for n in range(args.nodes):
            node_id = f"bench-{n}"
            _, token = await cp.identities.create_token(
                Caller("", "bench"), group="default", ttl=timedelta(hours=1)
            )
            await enroll(
                IdentityFiles(root / node_id),
                address=cp.address,
                tls=ClientTls(),
                token=token,
                node_id=node_id,
            )
            await write_records(root / node_id, node_id, args.records, args.segment_bytes)
        print(f"{args.nodes} nodes x {args.records} records, batches of {args.batch}", flush=True)
        # A serving control plane's parsing processes are running already: start them before
        # the clock (their spawn and imports are a second or two of CPU, not ingest).
        assert cp.evidence is not None
        await cp.evidence.warm()
        before = cpu_times(root)
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--ship-only", "--root", str(root), "--node-address", cp.node_address,
            "--nodes", str(args.nodes), "--batch", str(args.batch),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await child.communicate()
        if child.returncode:
            raise SystemExit("the shipping process failed")
        after = cpu_times(root)
        result = json.loads(out)
        if result["records"] != args.nodes * args.records:
            raise SystemExit(f"shipped {result['records']:,} records of {args.nodes * args.records:,}")
        lat = result["lat"]
        print(f"records/s verified, committed, acknowledged   {result['records'] / result['elapsed']:,.0f}")
        print(
            f"records                                       {result['records']:,} in {result['elapsed']:.2f} s"
        )
        print(
            f"batch ACK latency                             p50 {pct(lat, 0.5) * 1000:.1f} ms  "
            f"p99 {pct(lat, 0.99) * 1000:.1f} ms  max {max(lat) * 1000:.1f} ms  mean {statistics.mean(lat) * 1000:.1f} ms"
        )
        per = {name: (after[name] - before.get(name, 0.0)) / result["records"] * 1e6 for name in after}
        per["shipping process (the nodes' side)"] = result["cpu"] / result["records"] * 1e6
        print("CPU per record (user+system), and what one core spent on it alone could take:")
        for name, us in per.items():
            print(f"  {name:<44}{us:7.1f} us   {1e6 / us if us else 0:>10,.0f} records/s per core")
        ingest = sum(us for name, us in per.items() if not name.startswith(("shipping", " ")))
        print(
            f"  {'control plane + PostgreSQL':<44}{ingest:7.1f} us   {1e6 / ingest:>10,.0f} records/s per core; "
            f"{os.cpu_count()} cores all on ingest: {os.cpu_count() * 1e6 / ingest:,.0f} records/s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--records", type=int, default=50_000, help="records per node")
    parser.add_argument("--batch", type=int, default=2000, help="records per batch")
    parser.add_argument("--workers", type=int, default=1, help="the control plane's evidence_workers")
    parser.add_argument(
        "--segment-bytes",
        type=int,
        default=DEFAULT_SEGMENT_BYTES,
        help="the nodes' log segment size (default the node's); each is shipped in order",
    )
    parser.add_argument("--ship-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--node-address", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    os.environ.setdefault("SIGNALBOX_LOG_LEVEL", "WARNING")
    asyncio.run(ship_only(arguments) if arguments.ship_only else main(arguments))
