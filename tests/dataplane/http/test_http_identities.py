"""JWT and mTLS callers through the HTTP front door, over real TLS (HTTPS with client
certificates from the node's client CA), as on gRPC."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.tls_front import CERTIFICATE_REQUIRED
from signalbox.tls import ServerTls
from tests.dataplane.api.test_identities import BILLING, RULES, identities
from tests.dataplane.conftest import NodeFactory, envelope, snapshot
from tests.fixtures.certs import Pem, TestCA
from tests.fixtures.jwks import TestIdp

HELLO = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
async def node(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, ca: TestCA, idp: TestIdp
) -> DataPlaneNode:
    server = ca.issue("node", server=True)
    node = await start_node(
        tls=ServerTls(cert=server.cert, key=server.key, client_ca=ca.ca_file), http_listen="127.0.0.1:0"
    )
    snap = snapshot(1, simulator.base_url, rules=RULES)
    snap.identities.extend(identities(idp))
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    return node


@pytest.fixture
def idp() -> TestIdp:
    return TestIdp()


def context(ca: TestCA, cert: Pem | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.ca_file))
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


async def post(
    node: DataPlaneNode, ctx: ssl.SSLContext, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://{node.http_address}/v1/chat/completions", json=HELLO, headers=headers, ssl=ctx
        ) as response,
    ):
        return response.status, await response.json()


async def test_a_mapped_client_certificate_is_the_caller_without_a_token(
    node: DataPlaneNode, ca: TestCA
) -> None:
    billing = ca.issue("billing", server=False, uris=(BILLING,))
    status, body = await post(node, context(ca, billing))
    assert status == 200, body
    assert body["object"] == "chat.completion"
    status, body = await post(node, context(ca, ca.issue("plain", server=False)))
    assert status == 401, body  # verified by the CA, but its SAN names no identity


async def test_a_jwt_caller_is_served_and_routed_by_its_claims(
    node: DataPlaneNode, ca: TestCA, idp: TestIdp
) -> None:
    plain = context(ca, ca.issue("plain", server=False))
    status, body = await post(node, plain, idp.token(plan="gold"))
    assert status == 200, body
    assert body["model"] == "sim-smart"  # the "gold" tier rule
    status, body = await post(node, plain, idp.token(exp=1_000_000, iat=999_000, nbf=999_000))
    assert status == 401, body
    assert body["error"]["type"] == "authentication_error"


async def test_without_a_trusted_client_certificate_the_call_is_refused_with_401(
    node: DataPlaneNode, ca: TestCA, idp: TestIdp, tmp_path: Path
) -> None:
    """As on gRPC: the handshake finishes, the request gets OpenAI's 401 error object, and a
    valid token does not rescue an untrusted connection."""
    stranger = TestCA(tmp_path / "stranger", name="billing")
    for cert in (None, stranger.issue("other", server=False, uris=(BILLING,)), stranger.pem):
        for token in (None, idp.token()):
            status, body = await post(node, context(ca, cert), token)
            assert status == 401, body
            assert body["error"]["type"] == "authentication_error"
            expected = CERTIFICATE_REQUIRED if cert is None else "authorization: invalid credentials"
            assert body["error"]["message"].startswith(expected), body
    status, body = await post(node, context(ca, ca.issue("billing", server=False, uris=(BILLING,))))
    assert status == 200, body


async def test_a_connection_that_bypasses_the_tls_front_is_refused(node: DataPlaneNode, idp: TestIdp) -> None:
    """The HTTP door behind the front listens in plaintext on loopback: a local process that
    dials it directly brings no TLS verdict and gets a 401, whatever its token."""
    assert node._doors is not None
    http_front = node._doors.fronts[-1]  # the gRPC door's front first, then the HTTP door's
    assert http_front.port == int(node.http_address.rsplit(":", 1)[1])
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{http_front.backend_port}/v1/chat/completions",
            json=HELLO,
            headers={"authorization": f"Bearer {idp.token()}"},
        ) as response,
    ):
        body = await response.json()
    assert response.status == 401, body
    assert body["error"]["message"].startswith("authorization: invalid credentials")
