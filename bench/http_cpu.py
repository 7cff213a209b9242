"""The node's CPU per request through its HTTP door, as ``bench/peers/signalbox.sh`` runs it.

    .venv/bin/python bench/http_cpu.py                          # wrk at 8 connections, 3 x 15 s
    .venv/bin/python bench/http_cpu.py --serial                 # and Δp50 at one connection
    .venv/bin/python bench/http_cpu.py --checkout ../base       # another checkout's node (its .venv)
    .venv/bin/python bench/http_cpu.py --profile /tmp/p.raw     # py-spy on the node during round 1
    .venv/bin/python bench/http_cpu.py --lean                   # bench/lean_door.py in the node's place
    .venv/bin/python bench/http_cpu.py --bare                   # lean_door.py --bare: server and client alone
    .venv/bin/python bench/http_cpu.py --floor VENV/bin/python  # the harness's floor/minproxy.py

``--bare``, ``--lean``, the node: a ladder from the node's HTTP server and upstream client doing
no work, to the work every request must have done, to the whole pipeline. ``--floor`` runs the
harness's ``floor/minproxy.py`` (the least a Python proxy can do) with a Python that has
``uvloop``, ``httptools`` and ``orjson`` (the harness installs one in ``.work/venv-limits``).

An nginx mock upstream answering at once (the harness's ``mock/response.json``), pinned to
CPU 1 with wrk (1 thread, the harness's ``load/post.lua``); one node worker pinned to CPU 0,
started with the flags of ``bench/peers/signalbox.sh`` (API key, policy routing, evidence
written and fsynced, metrics on) from a snapshot written by ``bench/peers/signalbox_pin.py``.
``node CPU us/req`` is the node's utime+stime (``/proc/<pid>/stat``) over a round divided
by the requests wrk completed: the figure that does not move with who else uses CPU 0.
Needs ``wrk``, ``nginx`` and ``../shared/bench-peers`` (``--harness``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from signalbox.ports import free_port

HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


NGINX_CONF = """worker_processes 1;
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/nginx.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_timeout 120s;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/body;
  default_type application/json;
  server {{
    listen 127.0.0.1:{port};
    location = /v1/chat/completions {{ return 200 '{body}'; }}
  }}
}}
"""


@contextmanager
def running(args: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(args, **kwargs)  # type: ignore[call-overload]
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(url: str, headers: dict[str, str], body: bytes, deadline: float) -> None:
    while True:
        try:
            request = urllib.request.Request(url, body, headers)
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer 200 in time")
        time.sleep(0.2)


def wrk(harness: Path, url: str, connections: int, seconds: float, headers: list[str], model: str) -> dict:
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    for header in headers:
        command += ["-H", header]
    command += ["-s", str(harness / "load" / "post.lua"), url]
    env = {**os.environ, "BENCH_BODY_FILE": str(harness / "load" / "request.json"), "BENCH_MODEL": model}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    result: dict = json.loads(line[len("WRKJSON ") :])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkout", type=Path, default=HERE.parent, help="whose node to run (its .venv)")
    parser.add_argument("--harness", type=Path, default=HERE.parent.parent / "shared" / "bench-peers")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serial", action="store_true", help="also Δp50 at one connection vs direct")
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the node during round 1")
    parser.add_argument("--cprofile", type=Path, help="run the node under cProfile, its stats written here")
    parser.add_argument(
        "--lean",
        action="store_true",
        help="run bench/lean_door.py (the mandatory work alone) instead of the node",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="run bench/lean_door.py --bare (the HTTP server and upstream client, no work)",
    )
    parser.add_argument(
        "--floor", type=Path, metavar="PYTHON", help="run the harness's floor/minproxy.py with this Python"
    )
    args = parser.parse_args()
    if sum((args.lean, args.bare, args.floor is not None)) > 1:
        parser.error("--lean, --bare and --floor each run something else in the node's place: one at most")
    checkout = args.checkout.resolve()
    python = checkout / ".venv" / "bin" / "python"
    harness = args.harness.resolve()
    with tempfile.TemporaryDirectory(prefix="http-cpu-") as tmp:
        work = Path(tmp)
        port, http_port = free_port(), free_port()
        body = json.dumps(json.loads((harness / "mock" / "response.json").read_text()), separators=(",", ":"))
        (work / "nginx.conf").write_text(NGINX_CONF.format(dir=work, port=port, body=body))
        mock = f"http://127.0.0.1:{port}/v1"
        subprocess.run(
            [
                str(python),
                str(checkout / "bench" / "peers" / "signalbox_pin.py"),
                str(work / "sb"),
                mock,
                mock,
            ],
            check=True,
            cwd=checkout,
        )
        key = (work / "sb" / "api-key").read_text()
        node_args = [
            "taskset", "-c", "0", str(python), *(["-m", "cProfile", "-o", str(args.cprofile)] if args.cprofile else []),
            "-m", "signalbox", "dataplane", "serve",
            "--listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{http_port}",
            "--metrics-listen", f"127.0.0.1:{free_port()}",
            "--snapshot", str(work / "sb" / "pin.bin"), "--trust-key", str(work / "sb" / "trust-key.pem"),
            "--data-dir", str(work / "sb" / "node"), "--node-id", "bench-node", "--mode", "on-prem",
            "--workers", "1",
        ]  # fmt: skip
        if args.lean or args.bare:
            node_args = ["taskset", "-c", "0", str(python), str(checkout / "bench" / "lean_door.py"),
                         "--port", str(http_port), "--upstream", mock, "--key", key,
                         "--data-dir", str(work / "lean"), *(["--bare"] if args.bare else [])]  # fmt: skip
        if args.floor is not None:
            node_args = ["taskset", "-c", "0", str(args.floor), str(harness / "floor" / "minproxy.py"),
                         "--port", str(http_port), "--upstream", f"gpt-4o-mini={mock}"]  # fmt: skip
        env = {**os.environ, "SIGNALBOX_LOG_LEVEL": "WARNING"}
        nginx = [
            "taskset",
            "-c",
            "1",
            "nginx",
            "-p",
            str(work),
            "-c",
            str(work / "nginx.conf"),
            "-e",
            str(work / "e"),
        ]
        log = (work / "node.log").open("wb")
        with (
            running(nginx),
            running(node_args, env=env, cwd=checkout, stdout=log, stderr=subprocess.STDOUT) as node,
        ):
            url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
            request = (harness / "load" / "request.json").read_bytes()
            auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            wait_ready(url, auth, request, time.monotonic() + 60)
            wait_ready(f"{mock}/chat/completions", {}, request, time.monotonic() + 10)
            headers = [f"Authorization: Bearer {key}"]
            what = (
                "lean door" if args.lean else "bare door" if args.bare else "floor" if args.floor else "node"
            )
            print(f"checkout {checkout}  {what} pid {node.pid}  load average {loadavg()}", flush=True)
            wrk(harness, url, args.connections, 3, headers, "gpt-4o-mini")  # warm-up
            for n in range(args.rounds):
                profiler = None
                if args.profile is not None and n == 0:
                    # Blocking (the node paused for each sample): --nonblocking samples are
                    # biased toward the event loop's idle wait under load.
                    spy = [str(HERE.parent / ".venv" / "bin" / "py-spy"), "record", "-p", str(node.pid), "-d",
                           str(int(args.seconds) - 2), "-r", "200", "-f", "raw", "-o", str(args.profile)]  # fmt: skip
                    profiler = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                before = cpu_times(node.pid)
                result = wrk(harness, url, args.connections, args.seconds, headers, "gpt-4o-mini")
                after = cpu_times(node.pid)
                user, system = after[0] - before[0], after[1] - before[1]
                used = user + system
                if profiler is not None:
                    profiler.wait()
                errors = sum(v for k, v in result.items() if k.startswith("err_"))
                rate = result["requests"] / (result["duration_us"] / 1e6)
                print(
                    f"c={args.connections} round {n + 1}: {rate:8.0f} req/s  p50 {result['p50_us'] / 1000:.3f} ms"
                    f"  p99 {result['p99_us'] / 1000:.3f} ms  errors {errors}"
                    f"  node CPU {used / result['requests'] * 1e6:.0f} us/req"
                    f" (user {user / result['requests'] * 1e6:.0f}, system {system / result['requests'] * 1e6:.0f})"
                    f"  load average {loadavg()}",
                    flush=True,
                )
            if args.serial:
                for n in range(args.rounds):
                    direct = wrk(harness, f"{mock}/chat/completions", 1, args.seconds / 2, [], "gpt-4o-mini")
                    before = cpu_seconds(node.pid)
                    through = wrk(harness, url, 1, args.seconds / 2, headers, "gpt-4o-mini")
                    used = cpu_seconds(node.pid) - before
                    print(
                        f"c=1 round {n + 1}: direct p50 {direct['p50_us'] / 1000:.3f} ms  node p50"
                        f" {through['p50_us'] / 1000:.3f} ms  Δp50 {(through['p50_us'] - direct['p50_us']) / 1000:.3f}"
                        f" ms  node CPU {used / through['requests'] * 1e6:.0f} us/req  load average {loadavg()}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
