"""What a gRPC server costs per call before any of Signalbox's work: the candidates for the
node's gRPC door, side by side, each serving one unary echo method.

    .venv/bin/python bench/grpc_servers.py                         # 8 s per server, 8 and 64 in flight
    .venv/bin/python bench/grpc_servers.py --seconds 2 --concurrency 8   # smoke run

Servers (each in its own process, pinned to the first CPU; the load generator on the others):

- ``aio``: ``grpc.aio`` on the default asyncio loop (what the node runs today);
- ``threaded``: the classic ``grpc.server`` with a thread pool (16 workers);
- ``threaded-loop``: the same, each call handed to an asyncio event loop in another thread
  and waited for (``run_coroutine_threadsafe``): what the node's asynchronous pipeline would
  need behind a threaded server;
- ``grpclib``: grpclib, a pure-asyncio implementation over the ``h2`` HTTP/2 state machine.

The method parses a ``google.protobuf.BytesValue`` (64 bytes) and answers it back, so each
server does the same protobuf work. The client is one ``grpc.aio`` channel with
``--concurrency`` calls in flight. Printed per server: calls/s, p50/p99 latency at the
client, and the server process's CPU per call (user + system, psutil), the figure that
bounds a node's throughput per core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent import futures
from typing import Any

import psutil
from google.protobuf.wrappers_pb2 import BytesValue

from signalbox.ports import free_port

METHOD = "/bench.Echo/Echo"
SERVERS = ("aio", "threaded", "threaded-loop", "grpclib")


def _echo(request: BytesValue, context: Any = None) -> BytesValue:
    return BytesValue(value=request.value)


def serve(kind: str, port: int, cpu: int) -> None:
    """Run server ``kind`` on ``port``, pinned to ``cpu``, until killed (the child's body)."""
    os.sched_setaffinity(0, {cpu})
    address = f"127.0.0.1:{port}"
    if kind in ("threaded", "threaded-loop"):
        import threading

        import grpc

        method: Any = _echo
        if kind == "threaded-loop":
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True).start()

            async def echo_async(request: BytesValue) -> BytesValue:
                return BytesValue(value=request.value)

            def method(request: BytesValue, context: Any) -> BytesValue:
                return asyncio.run_coroutine_threadsafe(echo_async(request), loop).result()

        handler = grpc.method_handlers_generic_handler(
            "bench.Echo",
            {
                "Echo": grpc.unary_unary_rpc_method_handler(
                    method, BytesValue.FromString, BytesValue.SerializeToString
                )
            },
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[handler])
        server.add_insecure_port(address)
        server.start()
        print("ready", flush=True)
        server.wait_for_termination()
        return
    if kind == "aio":

        async def run_aio() -> None:
            import grpc

            async def echo(request: BytesValue, context: Any) -> BytesValue:
                return BytesValue(value=request.value)

            handler = grpc.method_handlers_generic_handler(
                "bench.Echo",
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(
                        echo, BytesValue.FromString, BytesValue.SerializeToString
                    )
                },
            )
            server = grpc.aio.server(handlers=[handler])
            server.add_insecure_port(address)
            await server.start()
            print("ready", flush=True)
            await server.wait_for_termination()

        asyncio.run(run_aio())
        return
    if kind == "grpclib":
        from grpclib.const import Cardinality, Handler
        from grpclib.server import Server, Stream

        class Echo:
            async def echo(self, stream: Stream[BytesValue, BytesValue]) -> None:
                request = await stream.recv_message()
                assert request is not None
                await stream.send_message(BytesValue(value=request.value))

            def __mapping__(self) -> dict[str, Handler]:
                return {METHOD: Handler(self.echo, Cardinality.UNARY_UNARY, BytesValue, BytesValue)}

        async def run_grpclib() -> None:
            server = Server([Echo()])
            await server.start("127.0.0.1", port)
            print("ready", flush=True)
            await server.wait_closed()

        asyncio.run(run_grpclib())
        return
    raise SystemExit(f"unknown server {kind!r}")


async def load(port: int, seconds: float, concurrency: int) -> tuple[int, list[float]]:
    import grpc

    latencies: list[float] = []
    payload = BytesValue(value=os.urandom(64))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=BytesValue.SerializeToString,
            response_deserializer=BytesValue.FromString,
        )
        for _ in range(200):  # warm up the connection and both sides' caches
            await call(payload)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                answer = await call(payload)
                latencies.append(time.perf_counter() - start)
                if answer.value != payload.value:
                    raise SystemExit("the echo answered something else")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies


def measure(kind: str, seconds: float, concurrency: int, cpus: list[int]) -> dict[str, float]:
    """``kind`` served on ``cpus[0]``, loaded from the others (from the same one if alone)."""
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port), "--cpu", str(cpus[0])],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit(f"{kind}: the server did not start")
        server = psutil.Process(child.pid)
        os.sched_setaffinity(0, set(cpus[1:] or cpus))
        before = server.cpu_times()
        started = time.perf_counter()
        calls, latencies = asyncio.run(load(port, seconds, concurrency))
        elapsed = time.perf_counter() - started
        after = server.cpu_times()
    finally:
        child.kill()
        child.wait()
    cpu = (after.user - before.user) + (after.system - before.system)
    ordered = sorted(latencies)
    return {
        "calls_per_s": calls / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
        "server_cpu_us_per_call": cpu / calls * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--concurrency", type=int, action="append", help="calls in flight (repeatable; 8 and 64)"
    )
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of the table")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.cpu)
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("one CPU only: server and load share it (figures are not comparable with pinned runs)")
    print(
        f"{'server':<13} {'in flight':>9} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'server CPU us/call':>19}"
    )
    for concurrency in args.concurrency or [8, 64]:
        for kind in args.servers.split(","):
            figures = measure(kind, args.seconds, concurrency, cpus)
            if args.json:
                print(json.dumps({"server": kind, "concurrency": concurrency, **figures}))
                continue
            print(
                f"{kind:<13} {concurrency:>9} {figures['calls_per_s']:>9,.0f} {figures['p50_ms']:>8.2f} "
                f"{figures['p99_ms']:>8.2f} {figures['server_cpu_us_per_call']:>19.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
