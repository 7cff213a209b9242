"""``dataplane serve --workers 2``: two processes of one node on the same ports, each with its
own evidence chain; SIGTERM drains both."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records, verify_chain
from signalbox.api.admin.v1 import admin_pb2
from signalbox.ports import free_port
from signalbox.shell.cli import main
from signalbox.shell.simulator import Simulator
from tests.dataplane.conftest import API_KEY, pinned_serve_args
from tests.dataplane.test_pin_watch_process import site_pin
from tests.e2e.test_config_push import TENANT, _admin, _converged, _seed
from tests.fixtures.certs import Pem, TestCA
from tests.fixtures.postgres import RunningControlPlane, sql_rows
from tests.helpers import eventually, signalbox_exit

NODE = "node-w"


@asynccontextmanager
async def workers_up(
    args: list[str], workers: int, env: dict[str, str] | None = None, lines: list[str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``signalbox <args>`` running (in ``env``, else this environment), once ``workers``
    workers say they listen; killed on exit if still running. ``lines``: filled with what the
    processes write to stderr, as they write it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signalbox", *args, stderr=asyncio.subprocess.PIPE, env=env
    )
    lines = [] if lines is None else lines

    async def collect() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            lines.append(line.decode(errors="replace"))

    reader = asyncio.get_running_loop().create_task(collect())
    try:
        await eventually(
            lambda: sum("listening on" in line for line in lines) == workers,
            timeout=60,
            message="every worker up",
        )
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await reader
        # Shown with a failure: what the supervisor and its workers said.
        sys.stderr.writelines(lines)


def _samples(text: str, name: str) -> list[Any]:
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


async def test_two_workers_share_the_ports_keep_a_chain_each_and_drain_on_sigterm(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(site_pin(signing_key, 3, simulator.base_url))
    data_dir = tmp_path / "node"
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    args = pinned_serve_args(pin, trust_key, data_dir, "--node-id", NODE, "--workers", "2")
    args += ["--listen", f"127.0.0.1:{grpc_port}", "--http-listen", f"127.0.0.1:{http_port}"]
    args += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
    async with workers_up(args, 2) as process:
        answered: list[str] = []
        # A new connection per request: the kernel spreads connections over the two workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for i in range(120):
                async with session.post(
                    f"http://127.0.0.1:{http_port}/v1/chat/completions",
                    json={"model": "sim-fast", "messages": [{"role": "user", "content": f"hi {i}"}]},
                    headers={"authorization": f"Bearer {API_KEY}"},
                ) as response:
                    assert response.status == 200, await response.text()
                    answered.append(response.headers["x-evidence-id"])
        chains = {w: log_path(data_dir, NODE, w) for w in ("0", "1")}

        def recorded() -> dict[str, set[str]]:
            ids = {w: {r["record_id"] for r in read_records(path)} for w, path in chains.items()}
            assert set(answered) <= ids["0"] | ids["1"]
            return ids

        ids = await eventually(recorded, message="every answer's record in a chain")
        assert ids["0"], "worker 0 served"
        assert ids["1"], "worker 1 served"
        assert not ids["0"] & ids["1"]
        for w, path in chains.items():
            assert verify_chain(path).seq == len(ids[w])  # gap-free, each its own chain
            assert all(r["chain_id"] == f"{NODE}/{w}" for r in read_records(path))

        # One scrape of worker 0 answers for both: each worker's requests under its own label,
        # each family once.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{metrics_port}/metrics") as scraped,
        ):
            text = await scraped.text()
        served: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "signalbox_requests_total":
                    served[sample.labels["worker"]] = served.get(sample.labels["worker"], 0) + sample.value
        assert served == {"0": len(ids["0"]), "1": len(ids["1"])}
        assert text.count("# TYPE signalbox_requests_total counter") == 1
        assert {s.labels["worker"] for s in _samples(text, "signalbox_snapshot_version")} == {"0", "1"}
        workers = psutil.Process(process.pid).children()
        assert len(workers) == 2
        # Served on the node's own HTTP server and read between the workers with httptools:
        # none of the node's processes loads aiohttp (~10 MiB each).
        for each in (psutil.Process(process.pid), *workers):
            mapped = [m.path for m in each.memory_maps() if "/aiohttp/" in m.path]
            assert mapped == [], f"process {each.pid} loaded aiohttp"

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        for worker in workers:
            assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE


async def test_two_workers_behind_tls_fronts_share_the_port_and_refuse_untrusted_certificates(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    """With a client CA each worker has its own TLS front on the shared port: both serve a
    trusted client, and each refuses a certificate its CA did not sign with a 401."""
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(site_pin(signing_key, 3, simulator.base_url))
    ca = TestCA(tmp_path / "ca")
    server, caller = ca.issue("node", server=True), ca.issue("caller", server=False)
    stranger = TestCA(tmp_path / "stranger").issue("caller", server=False)
    data_dir = tmp_path / "node"
    http_port = free_port()
    args = pinned_serve_args(pin, trust_key, data_dir, "--node-id", NODE, "--workers", "2")
    args += ["--listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{http_port}"]
    args += ["--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-client-ca", str(ca.ca_file)]

    def context(cert: Pem) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(ca.ca_file))
        ctx.load_cert_chain(cert.cert, cert.key)
        return ctx

    async def post(session: aiohttp.ClientSession, cert: Pem, i: int) -> aiohttp.ClientResponse:
        async with session.post(
            f"https://localhost:{http_port}/v1/chat/completions",
            json={"model": "sim-fast", "messages": [{"role": "user", "content": f"hi {i}"}]},
            headers={"authorization": f"Bearer {API_KEY}"},
            ssl=context(cert),
        ) as response:
            await response.read()
            return response

    async with workers_up(args, 2) as process:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            trusted = [await post(session, caller, i) for i in range(60)]
            refused = [await post(session, stranger, i) for i in range(20)]
        assert {r.status for r in trusted} == {200}
        assert {r.status for r in refused} == {401}
        answered = {r.headers["x-evidence-id"] for r in trusted}
        chains = {w: log_path(data_dir, NODE, w) for w in ("0", "1")}

        def recorded() -> dict[str, list[dict[str, Any]]]:
            records = {w: list(read_records(path)) for w, path in chains.items()}
            assert answered <= {r["record_id"] for rs in records.values() for r in rs}
            return records

        records = await eventually(recorded, message="every answer's record in a chain")
        assert all(records.values()), "both workers served through their fronts"
        codes = [r["outcome"]["code"] for rs in records.values() for r in rs]
        assert codes.count("UNAUTHENTICATED") == 20
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--workers", "2", "--listen", "127.0.0.1:0"], "need fixed port numbers"),
        (
            ["--workers", "2", "--listen", "127.0.0.1:7791", "--http-listen", "127.0.0.1:0"],
            "need fixed port numbers",
        ),
        (["--workers", "-1"], "--workers: -1 is not a number of processes"),
        (["--workers", "65"], "--workers: 65 is more than the 64 workers a node may run"),
        (["--workers", "2", "--worker-index", "2"], "--worker-index: 2 is not below --workers 2"),
    ],
)
def test_workers_settings_that_cannot_work_are_refused(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dataplane", "serve", *args]) == 2
    assert re.search(re.escape(says), capsys.readouterr().err)


async def test_workers_of_a_connected_node_hold_one_sync_stream_follow_worker_0_and_ship_a_chain_each(
    control_plane: RunningControlPlane, simulator: Simulator, private_tmp: Path
) -> None:
    async with _admin(control_plane) as admin:
        api_key = await _seed(admin, simulator)
        data_dir = private_tmp / "workers-connected"
        log_sink = (private_tmp / "workers-connected.log").open("wb")
        grpc_port, http_port = free_port(), free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "signalbox", "dataplane", "serve", "--workers", "2",
            "--listen", f"127.0.0.1:{grpc_port}", "--http-listen", f"127.0.0.1:{http_port}",
            "--control-plane", control_plane.node_address, "--enroll-address", control_plane.address,
            "--trust-key", str(control_plane.trust_key_path), "--node-id", NODE, "--data-dir", str(data_dir),
            "--evidence-ship-ms", "100",
            stderr=log_sink,
            env={**os.environ, "SIGNALBOX_ENROLL_TOKEN": await control_plane.enroll_token()},
        )  # fmt: skip
        try:
            sync = control_plane.cp.sync
            assert sync is not None
            await eventually(lambda: NODE in sync.streams, timeout=60, message="worker 0 connected")
            version = await _converged(admin, NODE)
            # A change reaches both workers: worker 0 over its stream, worker 1 from its file.
            await admin.CreateModel(
                admin_pb2.CreateModelRequest(
                    model=admin_pb2.Model(
                        alias="extra",
                        capabilities=[1],
                        deployments=[admin_pb2.Deployment(provider="sim", upstream_model="extra-upstream")],
                    )
                )
            )
            await admin.ApplyPolicy(
                admin_pb2.ApplyPolicyRequest(tenant=TENANT, document="default_model: extra")
            )
            assert await _converged(admin, NODE) > version

            served_by: set[str] = set()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

                async def served_by_both() -> bool:
                    async with session.post(
                        f"http://127.0.0.1:{http_port}/v1/chat/completions",
                        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
                        headers={"authorization": f"Bearer {api_key}"},
                    ) as response:
                        assert response.status == 200, await response.text()
                        assert (await response.json())["model"] == "extra"  # the new policy, on either
                    for w in ("0", "1"):
                        if log_path(data_dir, NODE, w).exists() and any(
                            True for _ in read_records(log_path(data_dir, NODE, w))
                        ):
                            served_by.add(w)
                    return served_by == {"0", "1"}

                await eventually(served_by_both, timeout=60, message="both workers served the new policy")
            assert list(sync.streams).count(NODE) == 1

            async def shipped() -> set[str]:
                # In a thread: this loop also runs the control plane, whose ingest must go on
                # while the query waits (a partition being made holds the table's lock).
                rows = await asyncio.to_thread(
                    sql_rows,
                    control_plane.database_url,
                    f"SELECT DISTINCT chain_id FROM evidence_records WHERE node_id = '{NODE}'",
                )
                return {str(r[0]) for r in rows}

            async def both_shipped() -> bool:
                return await shipped() == {f"{NODE}/0", f"{NODE}/1"}

            await eventually(both_shipped, timeout=30, message="two chains")
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 60) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            log_sink.close()


async def test_workers_do_not_outlive_a_killed_supervisor(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(site_pin(signing_key, 3, simulator.base_url))
    port = free_port()
    args = pinned_serve_args(pin, trust_key, tmp_path / "node", "--node-id", NODE, "--workers", "2")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signalbox", *args, "--listen", f"127.0.0.1:{port}",
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        supervisor = psutil.Process(process.pid)
        await eventually(lambda: len(supervisor.children()) == 2, timeout=60, message="two workers")
        workers = supervisor.children()
        process.kill()  # SIGKILL: nothing of the supervisor runs
        await process.wait()

        def gone() -> bool:
            return all(not w.is_running() or w.status() == psutil.STATUS_ZOMBIE for w in workers)

        await eventually(gone, timeout=30, message="the workers stopped with their supervisor")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_by_default_a_node_runs_one_worker_per_core_and_one_on_a_port_the_kernel_picks(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    """No --workers and no SIGNALBOX_WORKERS (the suite sets it to 1 for the nodes it starts)."""
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(site_pin(signing_key, 3, simulator.base_url))
    env = {k: v for k, v in os.environ.items() if k != "SIGNALBOX_WORKERS"}
    cores = len(os.sched_getaffinity(0))
    for listen, expected in ((f"127.0.0.1:{free_port()}", cores), ("127.0.0.1:0", 1)):
        args = pinned_serve_args(pin, trust_key, tmp_path / f"node-{expected}", "--node-id", NODE)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "signalbox", *args, "--listen", listen,
            stderr=asyncio.subprocess.DEVNULL, env=env,
        )  # fmt: skip
        try:
            node = psutil.Process(process.pid)
            chains = tmp_path / f"node-{expected}" / "evidence"

            def started(chains: Path = chains, expected: int = expected) -> bool:
                return chains.is_dir() and len(list(chains.glob("*.jsonl.lock"))) == expected

            await eventually(started, timeout=60, message=f"{expected} evidence writers")
            # One worker is the node itself; several run under it as a supervisor.
            assert len(node.children()) == (expected if expected > 1 else 0)
        finally:
            process.terminate()
            await process.wait()


async def test_a_second_node_with_workers_cannot_join_the_ports_another_node_shares(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    """Workers share their ports with SO_REUSEPORT, which the kernel grants any process of the
    same user that asks: a second node started by mistake on the same ports (its own data dir,
    perhaps its own snapshot) would silently take a share of the first one's callers. Only the
    workers of one supervisor may share; another supervisor is refused and says why."""
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(site_pin(signing_key, 3, simulator.base_url))
    grpc_port, http_port = free_port(), free_port()
    ports = ["--listen", f"127.0.0.1:{grpc_port}", "--http-listen", f"127.0.0.1:{http_port}"]
    first = pinned_serve_args(pin, trust_key, tmp_path / "a", "--node-id", "node-a", "--workers", "2")
    second = pinned_serve_args(pin, trust_key, tmp_path / "b", "--node-id", "node-b", "--workers", "2")
    async with workers_up([*first, *ports], 2) as process:
        code, err = await signalbox_exit(*second, *ports, timeout=30)
        assert code == 1, err
        assert re.search(
            rf"port ({grpc_port}|{http_port}) is already shared by the workers of another node", err
        )
        assert f"supervisor pid {process.pid}" in err
        assert not (tmp_path / "b" / "evidence").exists()  # not one worker of it started
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
