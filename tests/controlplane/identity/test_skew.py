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

from dataplane.identity import CertificateRenewer, IdentityFiles
from tests.fixtures.postgres import RunningControlPlane, sql_execute, sql_rows


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


async def test_a_replica_whose_clock_is_half_an_hour_behind_accepts_a_fresh_node_certificate(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """Node certificates are dated by the database's clock; a minute back, a replica (whose TLS
    checks a node's certificate by its own clock) or a node installing its bundle, either a
    minute behind the database, took a fresh certificate as not yet valid."""
    files = IdentityFiles(private_tmp / "behind-2")
    await control_plane.enroll("behind-2", files.directory)
    await presented_server_certificate(control_plane, files)  # the node port takes it now
    ((now,),) = sql_rows(control_plane.database_url, "SELECT now()")
    node = x509.load_pem_x509_certificate(files.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    verifier = PolicyBuilder().store(Store([ca])).time(now - timedelta(minutes=30)).build_client_verifier()
    verifier.verify(node, [])


async def test_node_status_shows_the_newest_issued_certificate_whatever_its_backdating(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """The newest certificate was the one starting last; once certificates were dated an
    hour back instead of a minute, one renewed after an upgrade started before the one
    issued just before it, and node status showed the older certificate's expiry."""
    files = IdentityFiles(private_tmp / "renewed-1")
    await control_plane.enroll("renewed-1", files.directory)
    # As issued five minutes before, dated a minute back (before the upgrade).
    sql_execute(
        control_plane.database_url,
        "UPDATE node_certificates SET created_at = created_at - interval '5 minutes', "
        "not_before = created_at - interval '6 minutes', not_after = not_after - interval '5 minutes' "
        "WHERE node_id = 'renewed-1'",
    )
    renewed = await CertificateRenewer(
        files, target=control_plane.node_address, node_id="renewed-1", on_renewed=lambda: None
    ).renew_once()
    identities = control_plane.cp.identities
    assert identities is not None
    summary = (await identities.certificates_by_node())["renewed-1"]
    assert summary.not_after == renewed.not_valid_after_utc
