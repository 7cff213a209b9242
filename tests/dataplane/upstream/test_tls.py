"""The node's upstream client over TLS to real loopback servers: trust, SNI, refusal."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from dataplane.upstream import UpstreamClient
from dataplane.upstream import errors as upstream_errors
from tests.fixtures.certs import TestCA

from .rawserver import RawServer, post


def _server_tls(ca: TestCA, seen: list[str | None]) -> ssl.SSLContext:
    pem = ca.issue("upstream", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem.cert, pem.key)

    def sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        seen.append(name)

    context.sni_callback = sni  # type: ignore[assignment]
    return context


async def test_tls_to_a_trusted_upstream_with_sni(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    seen: list[str | None] = []
    trust = ssl.create_default_context(cafile=str(ca.ca_file))
    async with RawServer(tls=_server_tls(ca, seen)) as server, UpstreamClient(ssl_context=trust) as client:
        url = f"https://localhost:{server.port}/v1"
        assert await post(client, url) == b'{"ok":true}'
        assert await post(client, url) == b'{"ok":true}'
        assert server.accepted == 1
        assert seen == ["localhost"]


async def test_tls_to_an_untrusted_certificate_is_refused(client: UpstreamClient, tmp_path: Path) -> None:
    # The default trust (certifi's bundle) does not include a CA made in this test.
    seen: list[str | None] = []
    async with RawServer(tls=_server_tls(TestCA(tmp_path / "ca"), seen)) as server:
        with pytest.raises(upstream_errors.ConnectError):
            await post(client, f"https://localhost:{server.port}/v1")
        assert server.requests == []
