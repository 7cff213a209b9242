"""A real ``signalbox dataplane serve --snapshot FILE`` process follows its pin file.

One story on one process: newer pin applied, older refused, same version with
another hash refused as an alarm, garbage survived, then a good pin applied; each
problem logged once; SIGTERM still exits cleanly.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import AUTH, chat, envelope, pinned_serve_args, snapshot
from tests.dataplane.test_pin_watch import write_atomically
from tests.helpers import eventually


def site_pin(key: Ed25519PrivateKey, version: int, base_url: str, **fields: Any) -> bytes:
    """An air-gapped site's pin (as in test_cli): the upstream is inside site "lab"."""
    snap = snapshot(version, base_url, deployment="", **fields)
    snap.providers[0].location = snapshot_pb2.PROVIDER_LOCATION_SITE
    snap.providers[0].site = "lab"
    return envelope(snap, key).SerializeToString()


async def test_a_serving_process_follows_its_pin_file(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(site_pin(signing_key, 3, simulator.base_url))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        *pinned_serve_args(pin, trust_key, tmp_path / "node", "--snapshot-poll-interval", "0.1"),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = process.stderr
    lines: list[str] = []

    async def collect() -> None:
        while line := await stderr.readline():
            lines.append(line.decode(errors="replace"))

    reader = asyncio.get_running_loop().create_task(collect())

    def logged(text: str) -> int:
        return sum(text in line for line in lines)

    try:
        address = await eventually(
            lambda: next((m.group(1) for ln in lines if (m := re.search(r"listening on (\S+),", ln))), ""),
            timeout=30,
            message="node listening",
        )

        async with grpc.aio.insecure_channel(address) as channel:
            stub = infer_pb2_grpc.InferServiceStub(channel)

            async def served() -> tuple[int, str]:
                response = await stub.Infer(chat(), metadata=AUTH, timeout=10)
                return int(response.snapshot_version), response.model

            assert await served() == (3, "sim-fast")

            write_atomically(pin, site_pin(signing_key, 4, simulator.base_url, default_model="sim-smart"))
            await eventually(lambda: _is(served(), (4, "sim-smart")), message="v4 served without a restart")

            write_atomically(pin, site_pin(signing_key, 2, simulator.base_url))
            await eventually(lambda: logged("rollback: version 2") == 1, message="v2 refused")
            assert await served() == (4, "sim-smart")

            write_atomically(pin, site_pin(signing_key, 4, simulator.base_url))
            await eventually(lambda: logged("ALARM") == 1, message="the other v4 refused as an alarm")
            assert await served() == (4, "sim-smart")

            with pin.open("r+b") as f:  # garbage copied over the pin in place
                f.truncate(0)
                f.write(b"\xff" * 64)
            await eventually(lambda: logged("not a complete signed envelope") == 1, message="garbage noticed")
            assert await served() == (4, "sim-smart")

            write_atomically(pin, site_pin(signing_key, 5, simulator.base_url))
            await eventually(lambda: _is(served(), (5, "sim-fast")), message="v5 served after the garbage")

        assert logged("rollback: version 2") == 1
        assert logged("ALARM") == 1
        assert logged("not a complete signed envelope") == 1
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await reader


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
