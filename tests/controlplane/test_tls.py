"""TLS on the Admin / config-sync API: served to clients trusting the CA, refused otherwise."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.app import ControlPlane
from dataplane.app import DataPlaneNode
from dataplane.identity import IdentityFiles, enroll
from dataplane.node_settings import NodeSettings
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.ports import free_port as _free_port
from signalbox.tls import ClientTls, InsecureListen, ServerTls, TlsConfigError, aio_channel
from tests.fixtures.certs import TestCA
from tests.fixtures.postgres import cp_settings, running_control_plane


async def _health(address: str, tls: ClientTls) -> int:
    async with aio_channel(address, tls) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)


async def test_a_client_trusting_the_ca_is_served_and_one_that_does_not_is_refused(
    database_url: str, private_tmp: Path, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("controlplane", server=True)
    stranger = TestCA(tmp_path / "other", name="Some Other CA")
    settings = cp_settings(database_url, private_tmp, tls=ServerTls(cert=server.cert, key=server.key))

    async with running_control_plane(settings) as cp:
        assert await _health(cp.address, ClientTls(ca=ca.ca_file)) == health_pb2.HealthCheckResponse.SERVING
        async with aio_channel(cp.address, ClientTls(ca=ca.ca_file)) as channel:
            nodes = await admin_pb2_grpc.AdminServiceStub(channel).ListNodes(
                admin_pb2.ListNodesRequest(), metadata=cp.metadata, timeout=5
            )
            assert list(nodes.nodes) == []

        with pytest.raises(grpc.aio.AioRpcError) as untrusted:
            await _health(cp.address, ClientTls(ca=stranger.ca_file))
        assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE

        # signalbox admin: --ca trusts the control plane; another CA does not.
        ok = await _admin_cli(cp.address, cp.token, "--ca", str(ca.ca_file))
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("NODE  GROUP")
        bad = await _admin_cli(cp.address, cp.token, "--ca", str(stranger.ca_file))
        assert bad.returncode != 0
        assert "UNAVAILABLE" in bad.stderr

        # A plaintext client cannot talk to a TLS server either.
        with pytest.raises(grpc.aio.AioRpcError) as plaintext:
            await _health(cp.address, ClientTls())
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_with_a_client_ca_a_client_without_a_certificate_is_refused_and_a_node_with_one_syncs(
    database_url: str, private_tmp: Path, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("controlplane", server=True)
    node_cert = ca.issue("node-mtls", server=False)
    foreign = TestCA(tmp_path / "foreign", name="Foreign CA").issue("intruder", server=False)
    settings = cp_settings(
        database_url,
        private_tmp,
        tls=ServerTls(cert=server.cert, key=server.key, client_ca=ca.ca_file),
    )

    async with running_control_plane(settings) as cp:
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await _health(cp.address, ClientTls(ca=ca.ca_file))
        assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE

        with pytest.raises(grpc.aio.AioRpcError) as wrong_ca:
            await _health(cp.address, ClientTls(ca=ca.ca_file, cert=foreign.cert, key=foreign.key))
        assert wrong_ca.value.code() == grpc.StatusCode.UNAVAILABLE

        with_cert = ClientTls(ca=ca.ca_file, cert=node_cert.cert, key=node_cert.key)
        assert await _health(cp.address, with_cert) == health_pb2.HealthCheckResponse.SERVING

        # The node enrolls over the admin port (mutual TLS with the operator's CA here), then
        # syncs over the node port with the certificate the node CA issued.
        data_dir = tmp_path / "node"
        await enroll(
            IdentityFiles.under(data_dir),
            address=cp.address,
            tls=with_cert,
            token=await cp.enroll_token(),
            node_id="node-mtls",
        )
        node = DataPlaneNode(
            NodeSettings(
                listen="127.0.0.1:0",
                control_plane=cp.node_address,
                trust_keys=(cp.trust_key_path,),
                node_id="node-mtls",
                data_dir=data_dir,
                sync_backoff_base=0.05,
                sync_backoff_cap=0.2,
            )
        )
        async with node:
            await node.wait_for_version(1, timeout=15)
            assert node.sync is not None
            assert node.sync.status.connects >= 1


async def test_a_non_loopback_listen_without_tls_refuses_to_start_before_anything_runs(
    database_url: str, private_tmp: Path
) -> None:
    cp = ControlPlane(cp_settings(database_url, private_tmp, listen="0.0.0.0:0"))
    with pytest.raises(InsecureListen, match=r"--listen 0\.0\.0\.0:0: refusing to serve plaintext"):
        await cp.start()
    assert cp.address == ""
    assert cp.signer is None  # refused before the database was touched
    await cp.stop()


def test_the_listen_rule() -> None:
    loopback = ("127.0.0.1:7700", "127.9.9.9:1", "localhost:7700", "[::1]:7700")
    public = ("0.0.0.0:7700", "[::]:7700", "10.0.0.5:7700", "example.com:7700", ":7700")
    for listen in loopback:
        assert ServerTls().credentials(listen) is None, listen
    for listen in public:
        with pytest.raises(InsecureListen, match="give --tls-cert and --tls-key, or --insecure"):
            ServerTls().credentials(listen)
        assert ServerTls(insecure=True).credentials(listen) is None


def test_contradictory_or_unreadable_tls_settings_name_the_flag(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    pem = ca.issue("srv", server=True)
    with pytest.raises(TlsConfigError, match="--tls-cert and --tls-key: give both"):
        ServerTls(cert=pem.cert).credentials("127.0.0.1:0")
    with pytest.raises(TlsConfigError, match="--tls-client-ca: needs --tls-cert"):
        ServerTls(client_ca=ca.ca_file).credentials("127.0.0.1:0")
    with pytest.raises(TlsConfigError, match="--tls-key: cannot read"):
        ServerTls(cert=pem.cert, key=tmp_path / "missing.key").credentials("127.0.0.1:0")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TlsConfigError, match=r"--ca: .* is not a PEM file"):
        ClientTls(ca=tmp_path / "junk.pem").credentials("127.0.0.1:1")
    # A client to a non-loopback target uses TLS (system roots) unless told --insecure.
    assert ClientTls().credentials("10.0.0.5:7700") is not None
    assert ClientTls(insecure=True).credentials("10.0.0.5:7700") is None
    assert ClientTls().credentials("127.0.0.1:7700") is None


def test_controlplane_serve_refuses_a_public_plaintext_listen(tmp_path: Path) -> None:
    # Binds nothing: the check runs before the database or the port.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "signalbox",
            "controlplane",
            "serve",
            "--listen",
            f"0.0.0.0:{_free_port()}",
            "--data-dir",
            str(tmp_path / "cp"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SIGNALBOX_DATABASE_URL": ""},
    )
    assert done.returncode == 1, done.stderr
    assert "refusing to serve plaintext on a non-loopback address" in done.stderr
    assert "--insecure" in done.stderr
    assert not (tmp_path / "cp" / "postgres").exists()


async def _admin_cli(address: str, token: str, *tls: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "signalbox", "admin", "--target", address, "--token", token, *tls]
    return await asyncio.to_thread(
        subprocess.run, [*args, "node", "list"], capture_output=True, text=True, timeout=60
    )
