"""After a long control-plane outage a node is back within seconds, without a stampede."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dataplane.node_settings import NodeSettings
from dataplane.snapshot.sync_client import SyncClient, full_jitter
from signalbox.ports import free_port as _free_port
from tests.fixtures.postgres import cp_settings, running_control_plane
from tests.helpers import eventually

RECONNECT_BOUND_S = 5.0


def test_the_default_backoff_never_exceeds_a_few_seconds_however_long_the_outage() -> None:
    cap = NodeSettings().sync_backoff_cap
    assert cap <= 4.0
    # Failures accumulate for as long as the control plane is away: hours of them.
    for failures in (1, 5, 10, 60, 1_000, 100_000):
        assert full_jitter(failures, 0.5, cap, rand=lambda: 1.0) <= cap
    assert full_jitter(100_000, 0.5, cap, rand=lambda: 1.0) == cap


def test_reconnect_times_of_a_fleet_spread_over_the_whole_window() -> None:
    cap = NodeSettings().sync_backoff_cap
    # 500 nodes that all lost the control plane at the same moment, long ago.
    delays = [full_jitter(40, 0.5, cap) for _ in range(500)]
    assert all(0.0 <= d <= cap for d in delays)
    # Full jitter: uniform over [0, cap], not bunched at the cap (a stampede).
    assert min(delays) < 0.1 * cap
    assert max(delays) > 0.9 * cap
    thirds = [sum(1 for d in delays if i * cap / 3 <= d < (i + 1) * cap / 3) for i in range(3)]
    assert all(n > 100 for n in thirds), thirds
    assert statistics.pstdev(delays) > 0.2 * cap


def test_the_sync_client_defaults_to_the_short_cap() -> None:
    assert inspect.signature(SyncClient).parameters["backoff_cap"].default == NodeSettings().sync_backoff_cap


async def test_a_node_process_reconnects_within_5s_of_the_control_plane_returning(
    database_url: str, private_tmp: Path
) -> None:
    listen, node_listen = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    settings = cp_settings(database_url, private_tmp, listen=listen, node_listen=node_listen)
    node_dir = Path(tempfile.mkdtemp(prefix="node-reconnect-", dir=private_tmp))
    log = node_dir / "node.log"
    async with running_control_plane(settings) as cp:
        trust_key = cp.trust_key_path
        with log.open("wb") as sink:
            # The node with its shipped defaults (backoff base 0.5 s, cap from NodeSettings).
            node = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "signalbox",
                "dataplane",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--control-plane",
                node_listen,
                "--enroll-address",
                listen,
                "--trust-key",
                str(trust_key),
                "--node-id",
                "node-reconnect",
                "--data-dir",
                str(node_dir / "data"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
                env={
                    **os.environ,
                    "SIGNALBOX_LOG_LEVEL": "INFO",
                    "SIGNALBOX_ENROLL_TOKEN": await cp.enroll_token(),
                },
            )
        try:
            sync = cp.cp.sync
            assert sync is not None
            await eventually(lambda: "node-reconnect" in sync.streams, timeout=30, message="node connected")
            await cp.cp.stop()
        except BaseException:
            node.kill()
            await node.wait()
            raise

    # The control plane is gone. Let failures pile up past where the old 30 s cap would have
    # let the wait grow beyond 5 s (0.5 * 2**4 = 8 s from the 5th failure on).
    try:

        def failures() -> int:
            return log.read_text(errors="replace").count("retrying in")

        await eventually(lambda: failures() >= 7, timeout=60, message="7 failed reconnect attempts")
        async with running_control_plane(settings) as back:
            returned = time.monotonic()
            sync = back.cp.sync
            assert sync is not None
            await eventually(
                lambda: "node-reconnect" in sync.streams,
                timeout=RECONNECT_BOUND_S,
                interval=0.05,
                message=f"node reconnected within {RECONNECT_BOUND_S}s",
            )
            assert time.monotonic() - returned <= RECONNECT_BOUND_S
    finally:
        if node.returncode is None:
            node.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(node.wait(), 20)
            except TimeoutError:
                node.kill()
                await node.wait()
