"""TLS on the Infer API: served to clients trusting the CA, refused otherwise; no public plaintext."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dataplane.app import DataPlaneNode
from dataplane.node_settings import NodeSettings
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.tls import ClientTls, InsecureListen, ServerTls, TlsConfigError, aio_channel
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot
from tests.fixtures.certs import TestCA
from tests.fuzz.mutations import within
from tests.helpers import signalbox_exit


async def _infer(address: str, tls: ClientTls) -> str:
    async with aio_channel(address, tls) as channel:
        reply = await infer_pb2_grpc.InferServiceStub(channel).Infer(chat("hi"), metadata=AUTH, timeout=10)
        return str(reply.model)


async def test_the_infer_api_over_tls_serves_trusting_clients_only(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("node", server=True)
    node = await start_node(tls=ServerTls(cert=server.cert, key=server.key))
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted

    assert await _infer(node.address, ClientTls(ca=ca.ca_file)) == "sim-fast"

    stranger = TestCA(tmp_path / "stranger", name="Stranger CA")
    for tls in (ClientTls(ca=stranger.ca_file), ClientTls()):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _infer(node.address, tls)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    # The CLI: --ca trusts the node; without it, a TLS server is unreachable in plaintext.
    code, out, err = await _cli("--target", node.address, "--ca", str(ca.ca_file), "hi")
    assert code == 0, err
    assert "Simulated answer to: hi" in out
    code, _, err = await _cli("--target", node.address, "--ca", str(stranger.ca_file), "hi")
    assert code == 6, err
    assert "UNAVAILABLE" in err


async def test_with_a_client_ca_health_answers_callers_with_or_without_a_certificate(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("node", server=True)
    caller = ca.issue("caller", server=False)
    node = await start_node(tls=ServerTls(cert=server.cert, key=server.key, client_ca=ca.ca_file))

    async def health(tls: ClientTls) -> int:
        async with aio_channel(node.address, tls) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            return int(reply.status)

    # Health answers any TLS client (probes carry no certificate): NOT_SERVING, no snapshot yet.
    assert await health(ClientTls(ca=ca.ca_file)) == health_pb2.HealthCheckResponse.NOT_SERVING
    served = await health(ClientTls(ca=ca.ca_file, cert=caller.cert, key=caller.key))
    assert served == health_pb2.HealthCheckResponse.NOT_SERVING
    # Infer calls without a trusted certificate are refused per call: tests/dataplane/api/
    # test_identities.py.


async def test_a_node_refuses_a_public_plaintext_listen_before_opening_anything(
    tmp_path: Path, trust_key: Path
) -> None:
    node = DataPlaneNode(
        NodeSettings(listen="0.0.0.0:0", trust_keys=(trust_key,), data_dir=tmp_path / "node")
    )
    with pytest.raises(InsecureListen, match=r"--listen 0\.0\.0\.0:0: refusing to serve plaintext"):
        async with node:
            pytest.fail("the node started")
    assert not (tmp_path / "node").exists()


async def test_dataplane_serve_refuses_a_public_plaintext_listen(tmp_path: Path, trust_key: Path) -> None:
    args = ["--listen", "0.0.0.0:0", "--trust-key", str(trust_key), "--data-dir", str(tmp_path / "n")]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        "dataplane",
        "serve",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("SIGNALBOX_")},
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert "refusing to serve plaintext on a non-loopback address" in err.decode()
    assert "--insecure" in err.decode()


async def test_a_certificate_and_a_key_that_are_no_pair_are_named_not_a_busy_port(
    tmp_path: Path, trust_key: Path
) -> None:
    # gRPC only fails to bind with such files: the node said "cannot listen on 127.0.0.1:0",
    # sending the operator after a port conflict (and the control plane "in use, or not an
    # address of this host").
    ca = TestCA(tmp_path / "ca")
    one, other = ca.issue("one", server=True), ca.issue("other", server=True)
    for cert, key in ((one.cert, other.key), (trust_key, one.key)):
        code, err = await signalbox_exit(
            *("dataplane", "serve", "--listen", "127.0.0.1:0", "--trust-key", str(trust_key)),
            *("--data-dir", str(tmp_path / "node"), "--tls-cert", str(cert), "--tls-key", str(key)),
        )
        assert code == 1, err
        assert (
            err.strip()
            .splitlines()[-1]
            .startswith(
                f"signalbox dataplane serve: --tls-cert {cert} and --tls-key {key}: not a PEM certificate "
                "chain and its private key ("
            )
        ), err
    with pytest.raises(TlsConfigError, match="not a PEM certificate chain and its private key"):
        ServerTls(cert=one.cert, key=other.key).credentials("127.0.0.1:0")


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        "infer",
        "--api-key",
        AUTH[0][1].removeprefix("Bearer "),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("flag", ["--tls-cert", "--tls-key", "--tls-client-ca"])
@pytest.mark.parametrize("plant", ["fifo", "device"])
async def test_a_tls_file_that_is_a_fifo_or_a_device_is_refused_by_flag_without_waiting(
    tmp_path: Path, flag: str, plant: str
) -> None:
    # Read whole with a blocking open: a FIFO named by a flag hung the start, and /dev/zero was
    # read until memory ran out.
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("node", server=True)
    files = {"--tls-cert": server.cert, "--tls-key": server.key, "--tls-client-ca": ca.ca_file}
    files[flag].unlink()
    if plant == "fifo":
        os.mkfifo(files[flag])
    else:
        files[flag].symlink_to("/dev/zero")
    tls = ServerTls(cert=files["--tls-cert"], key=files["--tls-key"], client_ca=files["--tls-client-ca"])
    with pytest.raises(
        TlsConfigError, match=re.escape(f"{flag}: cannot read {files[flag]}: not a regular file")
    ):
        await asyncio.to_thread(within, 10, lambda: tls.credentials("127.0.0.1:0"), files[flag])
