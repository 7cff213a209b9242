"""``pip install 'signalbox[controlplane]'``: the control plane runs from the wheel, outside the checkout,
on embedded PostgreSQL, migrating with the migrations shipped in the package."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import tempfile
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import eventually
from tests.packaging.conftest import ROOT, Venv, clean_env, run

pytestmark = pytest.mark.timeout(600)


def test_migrations_come_from_the_installed_package(controlplane_venv: Venv, tmp_path: Path) -> None:
    probe = (
        "from controlplane.db.migrate import heads, migrations_dir; print(migrations_dir()); print(*heads())"
    )
    result = run(controlplane_venv.python, "-c", probe, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    location, head = result.stdout.splitlines()
    assert Path(location).is_relative_to(controlplane_venv.root)
    assert not Path(location).is_relative_to(ROOT)
    assert head


async def test_the_control_plane_serves_on_embedded_postgres(
    controlplane_venv: Venv, packaging_dir: Path
) -> None:
    # A directory of its own, away from the checkout: nothing may be found relative to it.
    cwd = Path(tempfile.mkdtemp(prefix="cp-", dir=packaging_dir))
    data_dir = ["--data-dir", "controlplane"]

    bootstrap = await asyncio.to_thread(
        run, controlplane_venv.signalbox, "controlplane", "bootstrap-admin", *data_dir, cwd=cwd, timeout=120
    )
    assert bootstrap.returncode == 0, bootstrap.stderr
    token = bootstrap.stdout.strip().splitlines()[-1]
    assert token.startswith("sbxadm_")

    process = await asyncio.create_subprocess_exec(
        controlplane_venv.signalbox,
        "controlplane",
        "serve",
        "--listen",
        "127.0.0.1:0",
        *data_dir,
        cwd=cwd,
        env=clean_env(),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = process.stderr
    drain: asyncio.Task[bytes] | None = None
    try:
        address = ""
        while not address:
            line = (await asyncio.wait_for(stderr.readline(), 120)).decode()
            assert line, "control plane exited before it served"
            if match := re.search(r"control plane serving on (\S+)", line):
                address = match.group(1)
        drain = asyncio.create_task(stderr.read())  # keep the pipe from filling up
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def serving() -> bool:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            await eventually(serving, timeout=30, message="control plane health SERVING")

        admin = [controlplane_venv.signalbox, "admin", "--target", address, "--token", token]
        created = await asyncio.to_thread(run, *admin, "tenant", "create", "acme", cwd=cwd)
        assert created.returncode == 0, created.stderr
        listed = await asyncio.to_thread(run, *admin, "--json", "tenant", "list", cwd=cwd)
        assert listed.returncode == 0, listed.stderr
        assert [t["name"] for t in json.loads(listed.stdout)["tenants"]] == ["acme"]

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if drain is not None:
            with contextlib.suppress(Exception):
                await drain
