"""The control plane is SIGKILLed while three nodes serve a closed loop of requests: no
request fails, and once it is back every node converges to a change made after the restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dataplane.app import DataPlaneNode
from dataplane.node_settings import NodeSettings
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.ports import free_port as _free_port
from signalbox.shell.simulator import Simulator
from tests.e2e.test_config_push import TENANT, _admin, _converged, _seed
from tests.fixtures.postgres import cp_settings, running_control_plane
from tests.helpers import eventually

NODES = ("kill-1", "kill-2", "kill-3")

# Two control-plane process starts, three enrollments and two convergences: each phase has its
# own bound (60 s to start, 15 s to converge), and on a loaded CI run their sum can pass the
# suite's default 120 s without anything being stuck.
pytestmark = pytest.mark.timeout(300)


@asynccontextmanager
async def _control_plane_process(
    database_url: str, data_dir: Path, listen: str, node_listen: str, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`signalbox controlplane serve` as a child process, healthy on ``listen``."""
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "signalbox", "controlplane", "serve",
            "--database-url", database_url, "--data-dir", str(data_dir), "--listen", listen,
            "--node-listen", node_listen,
            stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "SIGNALBOX_LOG_LEVEL": "INFO"},
        )  # fmt: skip
    try:

        async def healthy() -> bool:
            if process.returncode is not None:
                # At once (not retried), with the log tail: its temporary directory goes.
                tail = await asyncio.to_thread(log.read_text, errors="replace")
                raise RuntimeError(
                    f"control plane exited ({process.returncode}); its log ends:\n{tail[-4000:]}"
                )
            async with grpc.aio.insecure_channel(listen) as channel:
                try:
                    response = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1
                    )
                except grpc.aio.AioRpcError:
                    return False
                return response.status == health_pb2.HealthCheckResponse.SERVING

        await eventually(healthy, timeout=60, message="control plane process healthy")
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _counted_loop(
    node: DataPlaneNode, api_key: str, stop: asyncio.Event, served: set[int], answered: list[int]
) -> list[str]:
    """Infer calls one after another until ``stop``; records each answer's snapshot version
    and counts the answers; returns the failures."""
    failures = []
    request = infer_pb2.InferRequest(
        messages=[infer_pb2.Message(role=infer_pb2.ROLE_USER, content=[infer_pb2.ContentPart(text="hi")])]
    )
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        while not stop.is_set():
            try:
                response = await stub.Infer(
                    request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=10
                )
                served.add(response.snapshot_version)
                answered[0] += 1
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")
    return failures


async def test_sigkill_of_the_control_plane_fails_no_request_and_every_node_converges_after(
    database_url: str, private_tmp: Path, simulator: Simulator
) -> None:
    listen, node_listen = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    settings = cp_settings(database_url, private_tmp, listen=listen, node_listen=node_listen)
    log = private_tmp / "controlplane.log"
    # Seed through an in-process control plane (and learn its token); then the same data
    # dir and database serve from a child process we can SIGKILL.
    async with running_control_plane(settings) as seeding, _admin(seeding) as admin:
        api_key = await _seed(admin, simulator)
        token, trust_key = seeding.token, seeding.trust_key_path
        enroll_tokens = [await seeding.enroll_token() for _ in NODES]

    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            _control_plane_process(database_url, settings.data_dir, listen, node_listen, log)
        )
        nodes = []
        for node_id, enroll_token in zip(NODES, enroll_tokens, strict=True):
            node = DataPlaneNode(
                NodeSettings(
                    listen="127.0.0.1:0",
                    control_plane=node_listen,
                    enroll_address=listen,
                    enroll_token=enroll_token,
                    trust_keys=(trust_key,),
                    node_id=node_id,
                    data_dir=Path(tempfile.mkdtemp(prefix=f"{node_id}-", dir=private_tmp)),
                    drain_seconds=2.0,
                    sync_backoff_base=0.05,
                    sync_backoff_cap=0.5,
                )
            )
            await node.start()
            stack.push_async_callback(node.stop)
            nodes.append(node)
        async with _admin(seeding, token) as admin:
            good = 0
            for node_id in NODES:
                good = await _converged(admin, node_id)

        stop = asyncio.Event()
        served: list[set[int]] = [set() for _ in nodes]
        answered: list[list[int]] = [[0] for _ in nodes]
        loops = [
            asyncio.create_task(_counted_loop(node, api_key, stop, seen, count))
            for node, seen, count in zip(nodes, served, answered, strict=True)
        ]
        try:
            await eventually(lambda: all(good in seen for seen in served), message="load on every node")

            first.kill()  # SIGKILL: no drain, no goodbye on the streams
            await first.wait()

            def reconnecting() -> bool:
                return all(node.sync is not None and not node.sync.status.connected for node in nodes)

            await eventually(reconnecting, message="every node to notice the control plane is gone")
            # Requests keep being answered from the last-known-good while nobody is there.
            during = [count.copy() for count in answered]
            await eventually(
                lambda: all(now[0] > then[0] + 20 for now, then in zip(answered, during, strict=True)),
                message="every node to keep answering while the control plane is dead",
            )

            async with _control_plane_process(database_url, settings.data_dir, listen, node_listen, log):
                async with _admin(seeding, token) as admin:
                    await admin.ApplyPolicy(
                        admin_pb2.ApplyPolicyRequest(tenant=TENANT, document="default_model: large")
                    )
                    for node_id in NODES:
                        changed = await _converged(admin, node_id)
                        assert changed > good
                await eventually(
                    lambda: all(changed in seen for seen in served), message="load served by the new snapshot"
                )
        finally:
            stop.set()
            failures = await asyncio.gather(*loops)
        assert failures == [[], [], []]
