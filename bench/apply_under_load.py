"""Does applying a large snapshot slow the requests a node serves at the same moment?

    .venv/bin/python bench/apply_under_load.py                 # 10,000 tenants + 50,000 keys, 10 s per run
    .venv/bin/python bench/apply_under_load.py --tenants 100 --keys 500 --duration 3   # smoke run

The process tree of ``signalbox up`` (``infer_load.pinned_stack``: the node alone on CPU 0),
grown with ``ImportConfig`` to ``--tenants`` / ``--keys`` (one snapshot of that size). Then
``--rounds`` pairs of runs of ``--duration`` seconds of Infer load at ``--concurrency``: one
quiet, one while an admin change is made every ``--change-every`` seconds (each a new
snapshot of that size the node takes, as a delta, verifies over the full payload, compiles
and swaps in). Printed: p50/p99/max of every run, how many snapshots the node applied, and
the p99 added in each pair (this machine's p99 drifts by more than a millisecond between
runs, so only pairs are compared).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from infer_load import MODEL, PROMPT, Result, drive, pinned_stack

from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.shell.client_cli import build_request
from signalbox.shell.up import LocalStack

MAX_MESSAGE = 256 * 1024 * 1024
RENICE = 19


async def applied_version(
    admin: admin_pb2_grpc.AdminServiceAsyncStub, metadata: tuple[tuple[str, str], ...]
) -> int:
    nodes = await admin.ListNodes(admin_pb2.ListNodesRequest(), metadata=metadata)
    return max((n.applied_version for n in nodes.nodes), default=0)


async def grow(
    stack: LocalStack, admin: admin_pb2_grpc.AdminServiceAsyncStub, args: argparse.Namespace
) -> None:
    metadata = (("authorization", f"Bearer {stack.admin_token}"),)
    lines = [json.dumps({"kind": "tenant", "name": f"load-t{i:06d}"}) for i in range(args.tenants)]
    per = -(-args.keys // max(args.tenants, 1))
    lines += [json.dumps({"kind": "api_key", "tenant": f"load-t{i // per:06d}"}) for i in range(args.keys)]
    started = time.perf_counter()
    reply = await admin.ImportConfig(
        admin_pb2.ImportConfigRequest(jsonl="\n".join(lines).encode()), metadata=metadata, timeout=600
    )
    while await applied_version(admin, metadata) < reply.snapshot_version:  # noqa: ASYNC110 (polls another process)
        await asyncio.sleep(0.2)
    print(
        f"bench: imported {args.tenants} tenants + {args.keys} keys; node applied v{reply.snapshot_version} "
        f"{time.perf_counter() - started:.1f} s after the import started",
        flush=True,
    )


def line(label: str, result: Result, extra: str = "") -> None:
    print(
        f"{label:<32} {result.requests:>7} req {result.errors:>4} err  p50 {result.percentile(50):7.2f} ms"
        f"  p99 {result.percentile(99):7.2f} ms  max {result.latencies_ms[-1] if result.latencies_ms else 0:8.2f} ms"
        f"  {extra}",
        flush=True,
    )


def renice_control_plane(stack: LocalStack, data_dir: Path) -> int:
    """Lower the control plane's and its PostgreSQL's priority (nice 19); returns how many
    threads. In production they run on other machines; here they share CPU 1 with the load
    generator, and their work for each change would otherwise show up in the client's
    timings as if the node had been slow."""
    import psutil

    processes = [psutil.Process(stack.pid_of("controlplane"))]
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(str(data_dir) in part for part in cmdline) and "postgres" in " ".join(cmdline):
            processes += [process, *process.children(recursive=True)]
    count = 0
    for process in processes:
        with contextlib.suppress(psutil.Error, OSError):
            for thread in process.threads():
                os.setpriority(os.PRIO_PROCESS, thread.id, RENICE)
                count += 1
    return count


async def while_changing(
    admin: admin_pb2_grpc.AdminServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    call: Callable[[], Awaitable[None]],
    args: argparse.Namespace,
) -> tuple[Result, int, int]:
    """Drive the load while an admin change is made every ``--change-every`` seconds."""
    before = await applied_version(admin, metadata)
    stop = asyncio.Event()

    async def changes() -> int:
        count = 0
        while not stop.is_set():
            await admin.UpdateTenant(
                admin_pb2.UpdateTenantRequest(tenant="load-t000000", labels={"n": f"{time.time()}"}),
                metadata=metadata,
                timeout=120,
            )
            count += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.change_every)
        return count

    changer = asyncio.create_task(changes())
    busy = await drive(call, args.concurrency, 0, args.duration)
    stop.set()
    made = await changer
    return busy, made, await applied_version(admin, metadata) - before


async def bench(args: argparse.Namespace) -> int:
    async with pinned_stack(args) as stack:
        if not args.no_renice:
            threads = renice_control_plane(stack, stack.config.data_dir)
            print(f"bench: control plane and its PostgreSQL at nice {RENICE} ({threads} threads)", flush=True)
        options = [("grpc.max_receive_message_length", MAX_MESSAGE)]
        target = stack.config.controlplane_listen
        metadata = (("authorization", f"Bearer {stack.admin_token}"),)
        async with (
            grpc.aio.insecure_channel(target, options=options) as cp_channel,
            grpc.aio.insecure_channel(stack.dataplane_target) as channel,
        ):
            admin: admin_pb2_grpc.AdminServiceAsyncStub = admin_pb2_grpc.AdminServiceStub(cp_channel)
            await grow(stack, admin, args)
            stub = infer_pb2_grpc.InferServiceStub(channel)
            request = build_request(PROMPT, model=MODEL)
            api_metadata = (("authorization", f"Bearer {stack.api_key}"),)

            async def call() -> None:
                await stub.Infer(request, metadata=api_metadata, timeout=30)

            await drive(call, args.concurrency, args.warmup, None)
            added: list[float] = []
            for round_ in range(1, args.rounds + 1):
                quiet = await drive(call, args.concurrency, 0, args.duration)
                line(f"round {round_}: no apply", quiet)
                busy, made, applied = await while_changing(admin, metadata, call, args)
                line(
                    f"round {round_}: while snapshots apply",
                    busy,
                    f"{made} changes, {applied} versions applied meanwhile",
                )
                added.append(busy.percentile(99) - quiet.percentile(99))
            print(
                f"added p99 per round: {', '.join(f'{a:.2f}' for a in added)} ms; "
                f"median {statistics.median(added):.2f} ms"
            )
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="quiet/busy run pairs (p99 drifts between runs: compare pairs)"
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--change-every", type=float, default=1.0, help="seconds between admin changes")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument(
        "--no-renice",
        action="store_true",
        help="leave the control plane at normal priority beside the client",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(bench(parse())))
