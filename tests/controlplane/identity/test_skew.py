"""Certificates the control plane issues are dated back far enough that a node (or replica)
whose clock is somewhat behind the database's still takes them as in force.

A TLS stack cannot be told to verify at another time, so each test completes one real
handshake with the control plane now and then verifies the very certificates it presented
at an earlier time, as a peer whose clock is behind would (``cryptography``'s path builder).
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from dataplane.identity import IdentityFiles
from tests.fixtures.postgres import RunningControlPlane, sql_rows


async def presented_server_certificate(
    control_plane: RunningControlPlane, files: IdentityFiles
) -> x509.Certificate:
    """The node port's certificate, from a real mutual-TLS handshake verified now."""
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    host, port = control_plane.node_address.rsplit(":", 1)
    _reader, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname="localhost")
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


async def test_a_node_whose_clock_is_hours_behind_accepts_the_node_ports_certificate(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """The node port's certificate is issued afresh at every control-plane start; dated only a
    minute back (and by the replica's own clock), a node one minute behind failed every
    handshake after a restart until its clock caught up."""
    files = IdentityFiles(private_tmp / "behind-1")
    await control_plane.enroll("behind-1", files.directory)
    server = await presented_server_certificate(control_plane, files)
    ((now,),) = sql_rows(control_plane.database_url, "SELECT now()")
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    for behind in (timedelta(minutes=2), timedelta(hours=6), timedelta(hours=23)):
        verifier = (
            PolicyBuilder()
            .store(Store([ca]))
            .time(now - behind)
            .build_server_verifier(x509.DNSName("localhost"))
        )
        verifier.verify(server, [])  # raises VerificationError when not in force then
