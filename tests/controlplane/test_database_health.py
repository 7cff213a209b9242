"""The control plane's grpc health follows its database: NOT_SERVING on both ports while
PostgreSQL is down (a probe or load balancer sends admins and nodes elsewhere meanwhile),
SERVING again once it is back, without a restart of the control plane. Its metrics are
served meanwhile, saying the database is down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.fixtures.postgres import RestartablePostgres, cp_settings, running_control_plane
from tests.helpers import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("", admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name)


async def _health(address: str) -> set[int]:
    """The statuses the admin port's health gives for ``SERVICES``."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            (await stub.Check(health_pb2.HealthCheckRequest(service=s), timeout=5)).status for s in SERVICES
        }


async def test_health_is_not_serving_while_the_database_is_down(
    restartable_postgres: RestartablePostgres, private_tmp: Path
) -> None:
    database_url = restartable_postgres.database("health")
    async with running_control_plane(cp_settings(database_url, private_tmp)) as running:
        assert await _health(running.address) == {SERVING}

        await asyncio.to_thread(restartable_postgres.stop, "fast")
        await eventually(
            lambda: _health_is(running.address, NOT_SERVING), message="NOT_SERVING with the database down"
        )

        await asyncio.to_thread(restartable_postgres.start)
        await eventually(
            lambda: _health_is(running.address, SERVING), timeout=15, message="SERVING with it back"
        )


async def _health_is(address: str, status: int) -> bool:
    return await _health(address) == {status}


async def _scrape(address: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://{address}/metrics") as response:
        return response.status, await response.text()


async def test_metrics_are_served_while_the_database_is_down(
    restartable_postgres: RestartablePostgres, private_tmp: Path
) -> None:
    """The scrape reads the fleet from the database; without it, the counters (admin calls
    refused UNAVAILABLE, evidence refused) are what an operator needs, not a 500."""
    database_url = restartable_postgres.database("metrics")
    settings = cp_settings(database_url, private_tmp, metrics_listen="127.0.0.1:0")
    async with running_control_plane(settings) as running:
        assert (await _scrape(running.cp.metrics_address))[0] == 200

        await asyncio.to_thread(restartable_postgres.stop, "fast")
        async with grpc.aio.insecure_channel(running.address) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await admin.ListNodes(admin_pb2.ListNodesRequest(), metadata=running.metadata, timeout=5)
        status, body = await _scrape(running.cp.metrics_address)
        assert status == 200
        lines = body.splitlines()
        assert "signalbox_database_up 0.0" in lines
        assert 'signalbox_admin_calls_total{method="ListNodes",result="UNAVAILABLE"} 1.0' in lines

        await asyncio.to_thread(restartable_postgres.start)
        await eventually(
            lambda: _database_up(running.cp.metrics_address), timeout=15, message="the fleet read again"
        )


async def _database_up(address: str) -> bool:
    status, body = await _scrape(address)
    return status == 200 and "signalbox_database_up 1.0" in body.splitlines()
