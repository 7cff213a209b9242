"""How a node reaches the control plane's node port: its enrolled identity (enrolling first
when it has none and an enrollment token was given), an explicit client certificate, or
plaintext with ``insecure``; otherwise the node refuses to start, naming what is missing."""

from __future__ import annotations

import logging

from dataplane.identity import IdentityFiles, NodeIdentityError, enroll
from dataplane.node_settings import NodeSettings
from signalbox.tls import ClientTls

log = logging.getLogger("signalbox.dataplane")


async def control_plane_tls(s: NodeSettings, files: IdentityFiles) -> ClientTls:
    """The TLS settings of the node's calls to ``s.control_plane`` (``files``: its identity)."""
    assert s.control_plane is not None
    given = s.control_plane_tls
    if given.cert is not None:
        override = given if given.ca is not None else ClientTls(ca=files.ca, cert=given.cert, key=given.key)
        override.credentials(s.control_plane)  # unreadable files: refuse now
        return override
    problem = identity_problem(s, files)
    if problem and s.enroll_token:
        if not s.enroll_address:
            raise NodeIdentityError(
                "--enroll-address: required with --enroll-token (the control plane's --listen)"
            )
        given.credentials(s.enroll_address)
        log.info("%s: enrolling at %s", problem, s.enroll_address)
        await enroll(files, address=s.enroll_address, tls=given, token=s.enroll_token, node_id=s.node_id)
        problem = identity_problem(s, files)
    if not problem:
        return files.client_tls()
    if given.insecure:
        log.warning(
            "%s: syncing in PLAINTEXT with --insecure (the control plane must run with --insecure)",
            problem,
        )
        return ClientTls(insecure=True)
    raise NodeIdentityError(
        f"{problem}: give --enroll-token (env SIGNALBOX_ENROLL_TOKEN) from `signalbox admin node "
        "enroll-token`, with --enroll-address, to enroll this node"
    )


def identity_problem(s: NodeSettings, files: IdentityFiles) -> str:
    """What keeps the node from using its enrolled identity ("" when nothing does)."""
    problem = files.problem(s.node_id)
    if not problem and s.scope.node_group and files.group() != s.scope.node_group:
        # The control plane would refuse every Hello: say so now, not in a reconnect loop.
        problem = (
            f"the node certificate is for group {files.group()!r}, not --node-group {s.scope.node_group!r}"
        )
    return problem
