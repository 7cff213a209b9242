"""Streaming through one data-plane node versus straight to the upstream: TTFT and chunks/s.

Builds the same stack as ``infer_load.py`` (control plane with embedded
PostgreSQL, one node, the simulated upstream as a child process), pins the
node to CPU 0 and everything else to CPU 1, then for each concurrency level
streams the same answer

- straight from the simulator over HTTP/1.1 SSE (``direct``),
- through the node's ``InferStream`` gRPC API (``grpc``), and
- through the node's OpenAI-compatible HTTP door, SSE as OpenAI sends it (``http``),

and prints, per path, the time to the first text chunk (p50 and p99), the
TTFT the node adds, and the text chunks per second delivered to the client.
The simulator answers with one chunk per word of the prompt (``--words``),
optionally after ``--latency-ms`` and with ``--chunk-delay-ms`` between
chunks. See bench/README.md.

    .venv/bin/python bench/stream_bench.py [--streams 500] [--concurrency 1,8] [--words 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import grpc
import psutil
from infer_load import MODEL, Call, Result, cpu_seconds, drive, pinned_stack

from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.shell.client_cli import build_request
from signalbox.shell.up import LocalStack


@dataclass(frozen=True, slots=True)
class StreamRun:
    """One path at one concurrency level."""

    run: Result
    """Whole-stream latencies, count, errors and wall time (from ``drive``)."""
    ttft_ms: tuple[float, ...]
    """Time from sending the request to the first text chunk, per stream, sorted."""
    chunks: int
    """The upstream's text chunks whose text reached the client, over all streams (the words
    of the text received: the simulator sends one word a chunk)."""
    messages: int
    """Messages (SSE events, gRPC ``StreamDelta``) with text received over all streams: the
    gRPC door sends the chunks that are ready together as one (``dataplane.api.relay``)."""
    node_cpu_percent: float
    """CPU the node used during the run, in % of one core."""
    client_cpu_percent: float
    """CPU this load generator used: near 100 means the client, not the node, set the pace."""

    @property
    def chunk_rate(self) -> float:
        return self.chunks / self.run.seconds if self.run.seconds else 0.0

    @property
    def message_rate(self) -> float:
        return self.messages / self.run.seconds if self.run.seconds else 0.0

    def ttft(self, p: int) -> float:
        return percentile(self.ttft_ms, p)


def percentile(values: Sequence[float], p: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def prompt_of(words: int) -> str:
    # The simulator answers "Simulated answer to: <prompt>", one chunk per word.
    return " ".join(f"w{i}" for i in range(words))


ANSWER_PREFIX = "Simulated answer to: "
"""What the simulator puts before the prompt it answers."""


class IncompleteAnswer(Exception):
    """A stream ended without all of its answer's text: a relay that lost or reordered some."""


class Probe:
    """Wraps one streaming call so that ``drive`` runs it; collects TTFT and chunk counts."""

    def __init__(self) -> None:
        self.ttft_ms: list[float] = []
        self.chunks = 0
        self.messages = 0

    def reset(self) -> None:
        self.ttft_ms.clear()
        self.chunks = self.messages = 0

    def add(self, texts: list[str], prompt: str) -> None:
        """One stream's text, as the messages carrying it came; an answer that is not the
        simulator's whole answer to ``prompt`` is an error (``drive`` counts it), not chunks."""
        text = "".join(texts)
        if text != f"{ANSWER_PREFIX}{prompt}":
            raise IncompleteAnswer(f"{len(text)} characters of text, not the whole answer")
        self.messages += len(texts)
        self.chunks += len(text.split())

    def first(self, started: float) -> None:
        self.ttft_ms.append((time.perf_counter() - started) * 1000)


def sse_call(
    session: aiohttp.ClientSession, url: str, prompt: str, probe: Probe, headers: dict[str, str] | None = None
) -> Call:
    # The body the node sends upstream for the same request, usage included.
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async def call() -> None:
        started = time.perf_counter()
        texts: list[str] = []
        async with session.post(url, json=body, headers=headers) as response:
            response.raise_for_status()
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                # Parsed like any SSE client would: a chunk counts when it carries text.
                choices = json.loads(line[6:])["choices"]
                if choices and (text := choices[0]["delta"].get("content")):
                    if not texts:
                        probe.first(started)
                    texts.append(text)
        probe.add(texts, prompt)

    return call


def node_call(stub: infer_pb2_grpc.InferServiceAsyncStub, api_key: str, prompt: str, probe: Probe) -> Call:
    request = build_request(prompt, model=MODEL)
    metadata = (("authorization", f"Bearer {api_key}"),)

    async def call() -> None:
        started = time.perf_counter()
        texts: list[str] = []
        async for event in stub.InferStream(request, metadata=metadata, timeout=60):
            if event.HasField("delta") and event.delta.text:
                if not texts:
                    probe.first(started)
                texts.append(event.delta.text)
        probe.add(texts, prompt)

    return call


async def run_level(
    stack: LocalStack,
    calls: Sequence[tuple[str, Call, Probe]],
    concurrency: int,
    args: argparse.Namespace,
) -> list[StreamRun]:
    node, client = psutil.Process(stack.pid_of("dataplane")), psutil.Process()
    runs = []
    for _, call, probe in calls:
        await drive(call, concurrency, args.warmup, None)
        probe.reset()
        node_before, client_before = cpu_seconds(node), cpu_seconds(client)
        result = await drive(call, concurrency, args.streams, None)
        runs.append(
            StreamRun(
                run=result,
                ttft_ms=tuple(sorted(probe.ttft_ms)),
                chunks=probe.chunks,
                messages=probe.messages,
                node_cpu_percent=100 * (cpu_seconds(node) - node_before) / result.seconds,
                client_cpu_percent=100 * (cpu_seconds(client) - client_before) / result.seconds,
            )
        )
    return runs


def print_table(paths: Sequence[str], levels: Sequence[tuple[int, list[StreamRun]]]) -> None:
    """One row per path and level; the first path is ``direct``, the others add to it."""
    header = (
        f"{'concurrency':>11}  {'path':<9}  {'streams':>7}  {'errors':>6}  {'p50 TTFT ms':>11}  "
        f"{'p99 TTFT ms':>11}  {'added p50 ms':>12}  {'added p99 ms':>12}  {'chunks/s':>9}  {'messages/s':>10}  "
        f"{'node CPU %':>10}  {'client CPU %':>12}"
    )
    print(header)
    print("-" * len(header))
    for concurrency, runs in levels:
        direct = runs[0]
        for path, r in zip(paths, runs, strict=True):
            added = (
                f"{r.ttft(50) - direct.ttft(50):12.3f}  {r.ttft(99) - direct.ttft(99):12.3f}"
                if r is not direct
                else f"{'':12}  {'':12}"
            )
            print(
                f"{concurrency:>11}  {path:<9}  {r.run.requests:>7}  {r.run.errors:>6}  {r.ttft(50):11.3f}  "
                f"{r.ttft(99):11.3f}  {added}  {r.chunk_rate:9.0f}  {r.message_rate:10.0f}  {r.node_cpu_percent:10.0f}  "
                f"{r.client_cpu_percent:12.0f}"
            )
    for concurrency, runs in levels:
        for path, r in zip(paths, runs, strict=True):
            if r.run.errors:
                print(
                    f"errors at concurrency {concurrency} ({path}): {r.run.errors}, first: {r.run.first_error}"
                )


async def bench(args: argparse.Namespace) -> int:
    async with pinned_stack(args) as stack:
        prompt = prompt_of(args.words)
        behaviour = {"model": MODEL, "latency_ms": args.latency_ms, "chunk_delay_ms": args.chunk_delay_ms}
        print(
            f"bench: {args.streams} streams per path and level after {args.warmup} warm-up streams; "
            f"{args.words + 3} text chunks per answer; simulator latency {args.latency_ms:g} ms, "
            f"{args.chunk_delay_ms:g} ms between chunks"
        )
        print()
        levels = []
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
            grpc.aio.insecure_channel(stack.dataplane_target) as channel,
        ):
            async with session.post(f"{stack.simulator_url}/_sim/behaviour", json=behaviour) as response:
                response.raise_for_status()
            stub = infer_pb2_grpc.InferServiceStub(channel)
            url = f"{stack.simulator_url}/v1/chat/completions"
            direct_probe, grpc_probe, http_probe = Probe(), Probe(), Probe()
            door = f"http://{stack.config.dataplane_http_listen}/v1/chat/completions"
            auth = {"authorization": f"Bearer {stack.api_key}"}
            calls = (
                ("direct", sse_call(session, url, prompt, direct_probe), direct_probe),
                ("grpc", node_call(stub, stack.api_key, prompt, grpc_probe), grpc_probe),
                ("http", sse_call(session, door, prompt, http_probe, auth), http_probe),
            )
            for concurrency in args.concurrency:
                levels.append((concurrency, await run_level(stack, calls, concurrency, args)))
        print_table([name for name, _, _ in calls], levels)
        return 0 if all(r.run.requests > 0 and r.chunks > 0 for _, runs in levels for r in runs) else 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=500, help="streams per path and level (default 500)")
    parser.add_argument(
        "--concurrency",
        type=lambda v: [int(c) for c in v.split(",")],
        default=[1, 8],
        help="comma-separated concurrency levels (default 1,8)",
    )
    parser.add_argument(
        "--warmup", type=int, default=50, help="unmeasured streams before each run (default 50)"
    )
    parser.add_argument(
        "--words", type=int, default=64, help="prompt words; the answer has this many chunks plus 3"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="simulator delay before the first byte (default 0)"
    )
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=0.0, help="simulator delay between chunks (default 0)"
    )
    parser.add_argument("--data-dir", default=None, help="keep the stack's files here (default: a temp dir)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.words < 1 or any(c < 1 for c in args.concurrency):
        parser.error("--streams, --words and --concurrency must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(bench(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
