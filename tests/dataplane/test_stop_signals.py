"""A node that is draining gets the stop signal again: it keeps draining.

Under the shipped systemd unit (KillMode=control-group, the default) ``systemctl stop``
sends SIGTERM to every process of the service at once: the supervisor and each worker.
The supervisor then passes SIGTERM on to its workers: each worker gets it twice. Ctrl-C in
a terminal does the same with SIGINT (the whole foreground process group). The second
signal must not cut the drain short: in-flight calls finish, the evidence log is closed
with its last checkpoint signed, and the exit is clean.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.ports import free_port
from tests.dataplane.conftest import API_KEY, GatedUpstream, envelope, pinned_serve_args, snapshot
from tests.helpers import eventually

NODE = "node-s"


def _gated_pin(key: Ed25519PrivateKey, base_url: str) -> bytes:
    snap = snapshot(3, base_url, deployment="", provider_type="openai_compatible")
    snap.providers[0].location = snapshot_pb2.PROVIDER_LOCATION_SITE
    snap.providers[0].site = "lab"
    return envelope(snap, key).SerializeToString()


@pytest.mark.parametrize(
    ("signum", "workers"), [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2)]
)
async def test_a_second_stop_signal_during_the_drain_lets_open_streams_finish(
    signum: signal.Signals,
    workers: int,
    tmp_path: Path,
    trust_key: Path,
    signing_key: Ed25519PrivateKey,
    gated_upstream: GatedUpstream,
) -> None:
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(_gated_pin(signing_key, gated_upstream.base_url))
    data_dir = tmp_path / "node"
    http_port = free_port()
    args = pinned_serve_args(pin, trust_key, data_dir, "--node-id", NODE, "--workers", str(workers))
    args += ["--listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{http_port}"]
    lines: list[str] = []
    # Its own process group: the test signals it as systemd signals a service's cgroup.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signalbox", *args, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )

    async def collect() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            lines.append(line.decode(errors="replace"))

    reader = asyncio.get_running_loop().create_task(collect())
    try:
        await eventually(
            lambda: sum("listening on" in line for line in lines) == workers, timeout=60, message="up"
        )
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            streams: list[Any] = []
            for i in range(4 * workers):  # new connections: spread over the workers
                response = await session.post(
                    f"http://127.0.0.1:{http_port}/v1/chat/completions",
                    json={
                        "model": "sim-fast",
                        "stream": True,
                        "messages": [{"role": "user", "content": f"{i}"}],
                    },
                    headers={"authorization": f"Bearer {API_KEY}"},
                )
                assert response.status == 200, await response.text()
                while b"first" not in (line := await response.content.readline()):
                    assert line, "the stream ended before its first words"
                streams.append(response)

            if workers == 1:
                process.send_signal(signum)
                await eventually(
                    lambda: any("stopping: draining" in line for line in lines), message="draining"
                )
                process.send_signal(signum)  # again, as a supervisor or a terminal does
            else:
                os.killpg(process.pid, signum)  # systemd's stop: every process of the service
                await eventually(
                    lambda: sum("stopping: draining" in line for line in lines) == workers, message="draining"
                )
            gated_upstream.release.set()
            for response in streams:
                body = await response.content.read()
                assert b"[DONE]" in body
                response.release()
        assert await asyncio.wait_for(process.wait(), 60) == 0
        chains = [log_path(data_dir, NODE, str(w)) for w in range(workers)]
        served = sum(1 for chain in chains if chain.exists() for _ in read_records(chain))
        assert served == len(streams)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        await reader
        sys.stderr.writelines(lines)
