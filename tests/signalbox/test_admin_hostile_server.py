"""``signalbox admin`` against a server that answers with terminal escape sequences: what it
prints is escaped, in the table and in an error's details alike."""

from __future__ import annotations

import asyncio
import os
import sys

import grpc

from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc

TITLE = "\x1b]0;pwned\x07"
"""An OSC sequence that sets the terminal's title; a raw ESC in the output rewrites it."""


class _Hostile(admin_pb2_grpc.AdminServiceServicer):
    async def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListTenantsResponse:
        return admin_pb2.ListTenantsResponse(tenants=[admin_pb2.Tenant(id="t1", name=f"acme{TITLE}")])

    async def GetTenant(
        self, request: admin_pb2.GetTenantRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Tenant:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no tenant {TITLE}\x1b[2J")


async def _admin(address: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "SIGNALBOX_ADMIN_TARGET": address, "SIGNALBOX_ADMIN_TOKEN": "t"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        "admin",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_names_and_error_details_from_the_server_are_escaped() -> None:
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServiceServicer_to_server(_Hostile(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        code, out, err = await _admin(f"127.0.0.1:{port}", "tenant", "list")
        assert code == 0, err
        assert "\x1b" not in out
        assert "\x07" not in out
        assert "acme\\x1b]0;pwned\\x07" in out

        code, out, err = await _admin(f"127.0.0.1:{port}", "tenant", "get", "acme")
        assert code == 5, err
        assert "\x1b" not in err
        assert err == "signalbox admin: NOT_FOUND: no tenant \\x1b]0;pwned\\x07\\x1b[2J\n"
    finally:
        await server.stop(None)
