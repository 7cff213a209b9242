"""What the evidence path adds to a request: the same node with evidence on, with evidence
written but not shipped (``write``: what an air-gapped node pays), and "built" with it off (``bench/evidence_off/sitecustomize.py`` replaces the one evidence step with
nothing), in one run.

Each round starts the ``signalbox up`` process tree (pinned like ``infer_load.py``: the node
on CPU 0, everything else on CPU 1) for one variant, and measures at each concurrency level
the node's latency and the upstream's alone (``direct``); rounds alternate on, off, on, off,
... so the machine's drift falls on both. Printed per variant and level: the p50 and p99 the
node adds over the upstream (median over the rounds) and the node's CPU per request; then
the difference on - off, which is the evidence path's cost per request.

    .venv/bin/python bench/evidence_overhead.py [--rounds 3] [--requests 2000] [--concurrency 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.infer_load import RssSampler, pinned_stack, run_level
from signalbox.api.infer.v1 import infer_pb2_grpc

VARIANTS = ("on", "write", "off")
WRITE_ENV = {"SIGNALBOX_EVIDENCE_SHIP_MS": str(3_600_000)}
"""``write``: records written and fsynced as ever, shipped only in full batches (2,000
records; an hour's wait after a partial one): the node's own cost of its evidence, as an
air-gapped node pays it, without the control plane's ingest competing for the cores."""
OFF_ENV = {
    "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent / "evidence_off"), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep),
    "SIGNALBOX_BENCH_EVIDENCE_OFF": "1",
}


async def one_round(variant: str, args: argparse.Namespace) -> dict[int, tuple[float, float, float]]:
    """Per concurrency: (added p50 ms, added p99 ms, node CPU ms per request)."""
    args.dataplane_env = OFF_ENV if variant == "off" else WRITE_ENV if variant == "write" else {}
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
                        f"evidence {variant}: errors at concurrency {concurrency}: {node.first_error}"
                    )
                cpu = node.node_cpu_percent / 100 * node.seconds / node.requests * 1000
                out[concurrency] = (
                    node.percentile(50) - direct.percentile(50),
                    node.percentile(99) - direct.percentile(99),
                    cpu,
                )
                print(
                    f"bench: round evidence {variant}, concurrency {concurrency}: added p50 "
                    f"{out[concurrency][0]:.3f} ms, p99 {out[concurrency][1]:.3f} ms, node CPU {cpu:.3f} ms/request",
                    flush=True,
                )
    return out


async def bench(args: argparse.Namespace) -> int:
    results: dict[str, list[dict[int, tuple[float, float, float]]]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            results[variant].append(await one_round(variant, args))
    print()
    header = f"{'concurrency':>11}  {'evidence':<8}  {'added p50 ms':>12}  {'added p99 ms':>12}  {'node CPU ms/req':>15}"
    print(header)
    print("-" * len(header))
    medians: dict[tuple[str, int], tuple[float, float, float]] = {}
    for concurrency in args.concurrency:
        for variant in VARIANTS:
            rounds = [r[concurrency] for r in results[variant]]
            m = tuple(statistics.median(x[i] for x in rounds) for i in range(3))
            medians[variant, concurrency] = (m[0], m[1], m[2])
            print(f"{concurrency:>11}  {variant:<8}  {m[0]:12.3f}  {m[1]:12.3f}  {m[2]:15.3f}")
    print()
    for variant, what in (("on", "evidence path"), ("write", "evidence write (no shipping)")):
        for concurrency in args.concurrency:
            on, off = medians[variant, concurrency], medians["off", concurrency]
            print(
                f"{what} at concurrency {concurrency}: +{(on[0] - off[0]) * 1000:.0f} us p50, "
                f"+{(on[1] - off[1]) * 1000:.0f} us p99, +{(on[2] - off[2]) * 1000:.0f} us node CPU per request "
                f"(medians of {args.rounds} rounds each)"
            )
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant, alternating (default 3)")
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per path, level and round (default 2000)"
    )
    parser.add_argument(
        "--concurrency",
        type=lambda v: [int(c) for c in v.split(",")],
        default=[1, 8],
        help="comma-separated concurrency levels (default 1,8)",
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="unmeasured requests before each run (default 100)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = parser.parse_args(argv)
    args.duration, args.data_dir = None, None
    if args.rounds < 1 or args.requests < 1 or any(c < 1 for c in args.concurrency):
        parser.error("--rounds, --requests and --concurrency must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(bench(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
