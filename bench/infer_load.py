"""Load through one data-plane node versus straight to the upstream, at fixed concurrency.

Builds the same process tree as ``signalbox up`` (control plane with embedded
PostgreSQL, one node, the simulated upstream as a child), pins the node to CPU 0
and everything else (this load generator, the simulator, the control plane) to
CPU 1, then for each concurrency level sends the same chat request

- straight to the simulator over HTTP (``direct``),
- through the node's Infer gRPC API (``signalbox``), and
- with ``--http``, through the same node's OpenAI-compatible HTTP door (``http``),

and prints p50/p99 latency, requests/s, the p50 the node adds, the node's CPU per
request and its peak RSS (sampled with psutil). ``--grpc-floor`` starts the node with its
Infer method answering at once (``bench/grpc_floor``): what the gRPC door costs before any
of the pipeline. See bench/README.md.

    .venv/bin/python bench/infer_load.py [--requests 2000] [--concurrency 1,8,64] [--http]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import grpc
import psutil

from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.shell.client_cli import build_request
from signalbox.shell.up import LocalStack, StackConfig

PROMPT = "Summarize the benefits of a control plane / data plane split in one sentence."
MODEL = "sim-fast"
MIB = 1024 * 1024
GRPC_FLOOR_ENV = {
    "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent / "grpc_floor"), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep),
    "SIGNALBOX_BENCH_GRPC_FLOOR": "1",
}


@dataclass(frozen=True, slots=True)
class Result:
    """One path at one concurrency level."""

    path: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: tuple[float, ...]
    peak_rss_mib: float | None = None
    first_error: str = ""
    node_cpu_percent: float = 0.0
    """CPU the node used during the run, in % of one core: near 100 means the node is the limit."""
    client_cpu_percent: float = 0.0
    """CPU this load generator used: near 100 means the figures are the client's, not the node's."""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(p) - 1]


Call = Callable[[], Awaitable[None]]


async def drive(call: Call, concurrency: int, requests: int, duration: float | None) -> Result:
    """Run ``call`` from ``concurrency`` workers until ``requests`` are done (or ``duration`` passes)."""
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    deadline = time.perf_counter() + duration if duration else None

    async def worker() -> None:
        nonlocal issued
        while True:
            if deadline is not None:
                if time.perf_counter() >= deadline:
                    return
            elif issued >= requests:
                return
            issued += 1
            started = time.perf_counter()
            try:
                await call()
            except Exception as exc:  # a bench reports failures, it does not stop on them
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return Result(
        path="",
        concurrency=concurrency,
        requests=len(latencies),
        errors=len(errors),
        seconds=seconds,
        latencies_ms=tuple(sorted(latencies)),
        first_error=errors[0] if errors else "",
    )


class RssSampler:
    """Peak resident set size of one process, sampled in the background."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        self.peak = max(self.peak, int(self._process.memory_info().rss))

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._interval)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sample()


async def run_level(
    stack: LocalStack,
    stub: infer_pb2_grpc.InferServiceAsyncStub,
    session: aiohttp.ClientSession,
    sampler: RssSampler,
    concurrency: int,
    args: argparse.Namespace,
) -> tuple[Result, ...]:
    """``direct`` and the node's gRPC path (``signalbox``, or ``grpc-floor``), then ``http``
    with ``--http``; each after its warm-up, one after the other."""
    metadata = (("authorization", f"Bearer {stack.api_key}"),)
    request = build_request(PROMPT, model=MODEL)
    url = f"{stack.simulator_url}/v1/chat/completions"
    # The body the node sends upstream for this request, so both paths carry the same payload.
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}

    async def direct() -> None:
        async with session.post(url, json=body) as response:
            response.raise_for_status()
            await response.read()

    async def through_node() -> None:
        await stub.Infer(request, metadata=metadata, timeout=30)

    door = f"http://{stack.config.dataplane_http_listen}/v1/chat/completions"
    headers = {"authorization": f"Bearer {stack.api_key}"}

    async def through_http_door() -> None:
        async with session.post(door, json=body, headers=headers) as response:
            response.raise_for_status()
            await response.read()

    node, client = psutil.Process(stack.pid_of("dataplane")), psutil.Process()
    results = []
    paths: list[tuple[str, Call]] = [
        ("direct", direct),
        ("grpc-floor" if getattr(args, "grpc_floor", False) else "signalbox", through_node),
    ]
    if getattr(args, "http", False):
        paths.append(("http", through_http_door))
    for path, call in paths:
        await drive(call, concurrency, args.warmup, None)
        sampler.peak = 0
        node_before, client_before = cpu_seconds(node), cpu_seconds(client)
        spy = profiler(node.pid, args, path, concurrency)
        with sampler:
            result = await drive(call, concurrency, args.requests, args.duration)
        if spy is not None:
            _, errors = await asyncio.to_thread(spy.communicate, timeout=30)
            if spy.returncode != 0:
                print(f"bench: py-spy failed ({spy.returncode}): {errors.decode()[-500:]}", flush=True)
        results.append(
            replace(
                result,
                path=path,
                peak_rss_mib=sampler.peak / MIB if path != "direct" else None,
                node_cpu_percent=100 * (cpu_seconds(node) - node_before) / result.seconds,
                client_cpu_percent=100 * (cpu_seconds(client) - client_before) / result.seconds,
            )
        )
    return tuple(results)


def profiler(
    pid: int, args: argparse.Namespace, path: str, concurrency: int
) -> subprocess.Popen[bytes] | None:
    """With ``--profile``: py-spy (raw, 200 Hz, not pausing the node) on the node while it
    serves ``path``, written next to ``--profile`` as ``<name>.<path>.c<concurrency>.raw``."""
    if getattr(args, "profile", None) is None or path == "direct":
        return None
    out = args.profile.with_name(f"{args.profile.stem}.{path}.c{concurrency}.raw")
    seconds = max(1, int(args.duration) - 1)
    spy = [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid), "-d", str(seconds),
           "-r", "200", "-f", "raw", "-o", str(out), "--nonblocking"]  # fmt: skip
    print(f"bench: py-spy on the node ({path}, concurrency {concurrency}) -> {out}", flush=True)
    return subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def print_table(rows: Sequence[Sequence[Result]]) -> None:
    """One row per path and level (``direct`` first in each level); "added" is against it."""
    header = (
        f"{'concurrency':>11}  {'path':<10}  {'requests':>8}  {'errors':>6}  {'req/s':>8}  "
        f"{'p50 ms':>7}  {'p99 ms':>7}  {'added p50 ms':>12}  {'node peak RSS MiB':>17}  "
        f"{'node CPU %':>10}  {'client CPU %':>12}"
    )
    print(header)
    print("-" * len(header))
    for level in rows:
        direct = level[0]
        for r in level:
            added = f"{r.percentile(50) - direct.percentile(50):12.3f}" if r is not direct else " " * 12
            rss = f"{r.peak_rss_mib:17.1f}" if r.peak_rss_mib is not None else " " * 17
            print(
                f"{r.concurrency:>11}  {r.path:<10}  {r.requests:>8}  {r.errors:>6}  {r.rate:8.0f}  "
                f"{r.percentile(50):7.3f}  {r.percentile(99):7.3f}  {added}  {rss}  "
                f"{r.node_cpu_percent:10.0f}  {r.client_cpu_percent:12.0f}"
            )
    print()
    # CPU time per request is the node's own cost even when other work shares its core, and
    # its inverse is the rate one core could sustain if the node had that core to itself.
    for level in rows:
        for node in level[1:]:
            if node.requests:
                per_request = node.node_cpu_percent / 100 * node.seconds / node.requests * 1000
                through = "" if node.path == "signalbox" else f" ({node.path})"
                what = f"node CPU per request at concurrency {node.concurrency}{through}"
                if per_request:
                    print(
                        f"{what}: {per_request:.3f} ms (one core sustains at most {1000 / per_request:.0f} req/s)"
                    )
                else:
                    # The kernel counts CPU time in clock ticks: a run too short to use one has no figure.
                    bound = 1000 / os.sysconf("SC_CLK_TCK") / node.requests
                    print(f"{what}: under {bound:.3f} ms (less than one clock tick over {node.requests} "
                          "requests: measure more of them)")  # fmt: skip
    for level in rows:
        for r in level:
            if r.errors:
                print(f"errors at concurrency {r.concurrency} ({r.path}): {r.errors}, first: {r.first_error}")


_ALLOWED_AT_START = frozenset(os.sched_getaffinity(0))
"""The CPUs this process may use before ``pin`` moved it to CPU 1: a bench that starts the
stack several times (rounds) must not read its own pinning as the machine's limit."""


def pin(no_pin: bool) -> tuple[str | None, str | None, str]:
    """Choose cores: (node, everything else, description). Needs CPUs 0 and 1 to be allowed."""
    allowed = _ALLOWED_AT_START
    if no_pin or not {0, 1} <= allowed:
        why = "--no-pin" if no_pin else f"CPUs 0 and 1 are not both available (allowed: {sorted(allowed)})"
        return None, None, f"unpinned ({why}): figures include contention with the load generator"
    os.sched_setaffinity(0, {1})
    return "0", "1", "data plane pinned to CPU 0; load generator, simulator and control plane to CPU 1"


def background_load(seconds: float = 1.0) -> str:
    """How busy each CPU is before the load starts: pinning keeps our processes apart, not
    other work off the cores, so a busy machine makes every figure below pessimistic."""
    busy = psutil.cpu_percent(interval=seconds, percpu=True)
    shown = ", ".join(f"CPU {i} {p:.0f}%" for i, p in enumerate(busy))
    warning = "  WARNING: other work is running; figures are unreliable" if max(busy) > 20 else ""
    return f"background load over {seconds:g} s before the run: {shown}{warning}"


@contextlib.asynccontextmanager
async def pinned_stack(args: argparse.Namespace) -> AsyncIterator[LocalStack]:
    """The process tree of ``signalbox up`` in ``args.data_dir`` (a temp dir when unset),
    pinned as ``pin(args.no_pin)`` says, with the pinning and background load printed."""
    node_cpus, other_cpus, pinning = pin(args.no_pin)
    with contextlib.ExitStack() as cleanup:
        data_dir = (
            Path(args.data_dir)
            if args.data_dir
            else Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        )
        config = StackConfig.ephemeral(
            data_dir,
            simulator_in_process=False,
            controlplane_cpus=other_cpus,
            dataplane_cpus=node_cpus,
            simulator_cpus=other_cpus,
            dataplane_env=getattr(args, "dataplane_env", {}),
            **({} if getattr(args, "metrics", True) else {"dataplane_metrics_listen": None}),
        )
        stack = LocalStack(config)
        try:
            await stack.start(progress=lambda line: print(f"bench: {line}", flush=True))
            print(f"bench: {pinning}")
            print(f"bench: {background_load()}")
            yield stack
        finally:
            await stack.stop()


async def bench(args: argparse.Namespace) -> int:
    async with pinned_stack(args) as stack:
        sampler = RssSampler(stack.pid_of("dataplane"))
        amount = f"{args.duration:g} s" if args.duration else f"{args.requests} requests"
        print(f"bench: {amount} per path and level, after {args.warmup} warm-up requests; prompt {PROMPT!r}")
        print()
        rows = []
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            grpc.aio.insecure_channel(stack.dataplane_target) as channel,
        ):
            stub = infer_pb2_grpc.InferServiceStub(channel)
            for concurrency in args.concurrency:
                rows.append(await run_level(stack, stub, session, sampler, concurrency, args))
        print_table(rows)
        peak = max((node.peak_rss_mib or 0.0) for level in rows for node in level[1:])
        print()
        print(f"data plane peak RSS over the whole run: {peak:.1f} MiB")
        return 0 if all(node.requests > 0 for level in rows for node in level[1:]) else 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per path and level (default 2000)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per path and level instead of a request count"
    )
    parser.add_argument(
        "--concurrency",
        type=lambda v: [int(c) for c in v.split(",")],
        default=[1, 8, 64],
        help="comma-separated concurrency levels (default 1,8,64)",
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="unmeasured requests before each run (default 100)"
    )
    parser.add_argument("--data-dir", default=None, help="keep the stack's files here (default: a temp dir)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--http", action="store_true", help="also through the node's OpenAI-compatible HTTP door"
    )
    parser.add_argument(
        "--grpc-floor",
        action="store_true",
        help="the node's Infer answers at once, no pipeline (bench/grpc_floor): the gRPC door's own cost",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy raw profile of the node on each of its paths and levels (needs --duration)",
    )
    args = parser.parse_args(argv)
    if args.profile is not None and not args.duration:
        parser.error("--profile needs --duration (the profile spans the timed run)")
    if args.grpc_floor:
        args.dataplane_env = GRPC_FLOOR_ENV
    if args.requests < 1 or any(c < 1 for c in args.concurrency):
        parser.error("--requests and --concurrency must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(bench(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
