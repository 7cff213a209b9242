"""Variants of the node measured in one run, rounds alternating (on, off, on, off, ...) so the
machine's drift falls on each alike: what ``evidence_overhead.py`` and ``metrics_overhead.py``
share. A variant is a function that sets the ``args`` ``infer_load.pinned_stack`` reads (an
environment for the node, metrics on or off)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Awaitable, Callable, Mapping, Sequence

import aiohttp
import grpc

from bench.infer_load import RssSampler, pinned_stack, run_level
from signalbox.api.infer.v1 import infer_pb2_grpc

Variant = Callable[[argparse.Namespace], None]
Figures = tuple[float, float, float]
"""Added p50 ms, added p99 ms, node CPU ms per request."""


async def one_round(label: str, name: str, variant: Variant, args: argparse.Namespace) -> dict[int, Figures]:
    """One stack of ``variant``; per concurrency level its figures."""
    variant(args)
    out = {}
    async with pinned_stack(args) as stack:
        sampler = RssSampler(stack.pid_of("dataplane"))
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
            grpc.aio.insecure_channel(stack.dataplane_target) as channel,
        ):
            stub = infer_pb2_grpc.InferServiceStub(channel)
            for concurrency in args.concurrency:
                direct, node = await run_level(stack, stub, session, sampler, concurrency, args)
                if node.errors or not node.requests:
                    raise SystemExit(
                        f"{label} {name}: errors at concurrency {concurrency}: {node.first_error}"
                    )
                cpu = node.node_cpu_percent / 100 * node.seconds / node.requests * 1000
                out[concurrency] = (
                    node.percentile(50) - direct.percentile(50),
                    node.percentile(99) - direct.percentile(99),
                    cpu,
                )
                print(
                    f"bench: round {label} {name}, concurrency {concurrency}: added p50 "
                    f"{out[concurrency][0]:.3f} ms, p99 {out[concurrency][1]:.3f} ms, node CPU {cpu:.3f} ms/request",
                    flush=True,
                )
    return out


async def compare(
    label: str, variants: Mapping[str, Variant], args: argparse.Namespace
) -> dict[tuple[str, int], Figures]:
    """Every variant ``args.rounds`` times, alternating; prints the table of medians and
    returns them by (variant, concurrency)."""
    results: dict[str, list[dict[int, Figures]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            results[name].append(await one_round(label, name, variant, args))
    print()
    header = f"{'concurrency':>11}  {label:<8}  {'added p50 ms':>12}  {'added p99 ms':>12}  {'node CPU ms/req':>15}"
    print(header)
    print("-" * len(header))
    medians: dict[tuple[str, int], Figures] = {}
    for concurrency in args.concurrency:
        for name in variants:
            rounds = [r[concurrency] for r in results[name]]
            m = tuple(statistics.median(x[i] for x in rounds) for i in range(3))
            medians[name, concurrency] = (m[0], m[1], m[2])
            print(f"{concurrency:>11}  {name:<8}  {m[0]:12.3f}  {m[1]:12.3f}  {m[2]:15.3f}")
    print()
    return medians


def parser(description: str | None, default_concurrency: Sequence[int] = (1, 8)) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds per variant, alternating (default 3)")
    p.add_argument(
        "--requests", type=int, default=2000, help="requests per path, level and round (default 2000)"
    )
    p.add_argument(
        "--concurrency",
        type=lambda v: [int(c) for c in v.split(",")],
        default=list(default_concurrency),
        help=f"comma-separated concurrency levels (default {','.join(map(str, default_concurrency))})",
    )
    p.add_argument(
        "--warmup", type=int, default=100, help="unmeasured requests before each run (default 100)"
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    return p


def checked(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    args.duration, args.data_dir = None, None
    if args.rounds < 1 or args.requests < 1 or any(c < 1 for c in args.concurrency):
        p.error("--rounds, --requests and --concurrency must be positive")
    return args


def run(
    bench: Callable[[argparse.Namespace], Awaitable[int]], description: str | None, argv: Sequence[str] | None
) -> int:
    """A variant benchmark's ``main``: its arguments checked, then ``bench`` on an event loop."""
    return asyncio.run(bench(checked(parser(description), argv)))
