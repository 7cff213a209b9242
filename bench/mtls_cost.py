"""What TLS and client certificates cost a node per request, on the gRPC Infer API.

Starts ``signalbox dataplane serve`` (one worker, pinned to CPU 0) from a pinned signed
snapshot (bench/peers/signalbox_pin.py) in front of the simulated upstream, once per mode,
and sends the same chat request at ``--concurrency`` through one channel:

- ``plaintext``: no TLS (loopback);
- ``tls``: gRPC's own TLS, server certificate only;
- ``mtls``: ``--tls-client-ca``: the TLS front (dataplane/tls_front.py) runs the handshake
  with OpenSSL through pyOpenSSL, verifies the client certificate and relays to the gRPC
  server on loopback; the caller is its certificate's mapped URI SAN, no API key.

Prints per mode: requests/s, p50/p99 latency, and the node's CPU per request (its process
CPU time over the run divided by the requests). Modes run in alternating rounds
(``--rounds``), since this machine's speed drifts; compare within a round.

    .venv/bin/python bench/mtls_cost.py [--requests 3000] [--concurrency 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from signalbox_pin import build

from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.ports import free_port
from signalbox.shell.client_cli import build_request
from signalbox.shell.simulator.app import Simulator
from signalbox.tls import ClientTls, aio_channel
from tests.fixtures.certs import TestCA

MODES = ("plaintext", "tls", "mtls")
CALLER = "spiffe://bench.test/caller"
PROMPT = "Summarize the benefits of a control plane / data plane split in one sentence."


async def run_mode(
    mode: str, work: Path, ca: TestCA, args: argparse.Namespace
) -> tuple[float, float, float, float]:
    """(requests/s, p50 ms, p99 ms, node CPU us per request) for one mode."""
    server = ca.issue("node", server=True)
    caller = ca.issue("caller", server=False, uris=(CALLER,))
    port = free_port()  # for this run's node
    flags = ["--listen", f"127.0.0.1:{port}"]
    client = ClientTls()
    metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {(work / 'api-key').read_text()}"),)
    if mode != "plaintext":
        flags += ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
        client = ClientTls(ca=ca.ca_file)
    if mode == "mtls":
        flags += ["--tls-client-ca", str(ca.ca_file)]
        client = ClientTls(ca=ca.ca_file, cert=caller.cert, key=caller.key)
        metadata = ()
    node_dir = work / f"node-{mode}"
    process = await asyncio.create_subprocess_exec(
        *(["taskset", "-c", "0"] if not args.no_pin else []),
        sys.executable,
        "-m",
        "signalbox",
        "dataplane",
        "serve",
        *flags,
        "--snapshot",
        str(work / "pin.bin"),
        "--trust-key",
        str(work / "trust-key.pem"),
        "--data-dir",
        str(node_dir),
        "--node-id",
        f"bench-{mode}",
        "--mode",
        "on-prem",
        "--workers",
        "1",
        env={**os.environ, "SIGNALBOX_LOG_LEVEL": "WARNING"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aio_channel(f"localhost:{port}", client) as channel:
            stub = infer_pb2_grpc.InferServiceStub(channel)
            request = build_request(PROMPT, model="gpt-4o-mini")
            deadline = time.monotonic() + 60
            while True:
                try:
                    await stub.Infer(request, metadata=metadata, timeout=5)
                    break
                except grpc.aio.AioRpcError:
                    if time.monotonic() > deadline or process.returncode is not None:
                        raise
                    await asyncio.sleep(0.2)  # the node is starting; polled, not timed
            node = psutil.Process(process.pid)
            for _ in range(args.warmup):
                await stub.Infer(request, metadata=metadata, timeout=10)
            latencies: list[float] = []
            remaining = args.requests

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    start = time.perf_counter()
                    await stub.Infer(request, metadata=metadata, timeout=10)
                    latencies.append((time.perf_counter() - start) * 1000)

            cpu = node.cpu_times()
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            elapsed = time.perf_counter() - started
            after = node.cpu_times()
    finally:
        process.terminate()
        await process.wait()
    latencies.sort()
    used = (after.user + after.system) - (cpu.user + cpu.system)
    return (
        len(latencies) / elapsed,
        statistics.median(latencies),
        latencies[int(len(latencies) * 0.99) - 1],
        used / len(latencies) * 1e6,
    )


async def bench(args: argparse.Namespace) -> int:
    if not args.no_pin:
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with Simulator(models=("gpt-4o-mini",)) as upstream:
            build(work, upstream.base_url + "/v1", upstream.base_url + "/v1", mtls_uris=(CALLER,))
            ca = TestCA(work / "ca")
            print(
                f"bench: {args.requests} requests per mode at concurrency {args.concurrency}, "
                f"node pinned to CPU 0: {not args.no_pin}"
            )
            print(
                f"{'round':>5} {'mode':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'node CPU us/req':>16}"
            )
            for round_ in range(1, args.rounds + 1):
                for mode in args.modes:
                    rate, p50, p99, cpu = await run_mode(mode, work, ca, args)
                    print(
                        f"{round_:>5} {mode:<10} {rate:>8.0f} {p50:>8.2f} {p99:>8.2f} {cpu:>16.0f}",
                        flush=True,
                    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests per mode first")
    parser.add_argument(
        "--modes",
        type=lambda v: v.split(","),
        default=list(MODES),
        help=f"comma-separated, of {', '.join(MODES)} (default: all)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the node to CPU 0")
    return asyncio.run(bench(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
