"""What nodes say is escaped before it is logged, stored or shown: no forged log lines."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from controlplane.services.nodes import MAX_VERSION_CHARS
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2, sync_pb2_grpc
from signalbox.shell.admin_cli.output import NODE_COLUMNS, node_row
from signalbox.text import printable, printable_within
from signalbox.tls import aio_channel
from tests.controlplane.conftest import TIMEOUT, Admin, SyncNode
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually

HOSTILE = "bad payload\nWARNING controlplane: forged line\x1b[2J\x1b[31mred\x07\u202eevil"
ESCAPED = "bad payload\\nWARNING controlplane: forged line\\x1b[2J\\x1b[31mred\\x07\\u202eevil"


def test_printable_escapes_controls_and_clips() -> None:
    assert printable(HOSTILE) == ESCAPED
    assert printable("back\\slash\r\ttab") == "back\\slash\\r\\ttab"
    assert printable(printable(HOSTILE)) == ESCAPED  # idempotent: stored escaped, shown the same
    assert printable("plain ümlaut 日本") == "plain ümlaut 日本"
    clipped = printable("x" * 10_000, 100)
    assert clipped.startswith("x" * 100)
    assert clipped.endswith("...[9900 more chars]")
    assert len(printable("\n" * 10_000, 100)) < 130


async def _node(admin: Admin, node_id: str) -> admin_pb2.Node:
    nodes = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
    # Said Hello: an enrolled node is listed before (never connected, nothing seen).
    found = [n for n in nodes if n.node_id == node_id and n.HasField("last_seen_at")]
    assert found, f"node {node_id} not listed from a Hello"
    return found[0]


async def test_a_nack_reason_with_newlines_and_ansi_escapes_is_escaped_everywhere(
    admin: Admin, sync_nodes: object, caplog: pytest.LogCaptureFixture
) -> None:
    node: SyncNode = await sync_nodes("node-hostile")  # type: ignore[operator]
    envelope = await node.next_envelope()
    version = node.verified(envelope).version
    with caplog.at_level(logging.WARNING, logger="controlplane.api.sync"):
        node.nack(envelope, version, HOSTILE)

        async def nack_recorded() -> bool:
            return (await _node(admin, "node-hostile")).last_nack_version == version

        await eventually(nack_recorded, message="NACK visible in ListNodes")

    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert logged == [f"node node-hostile refused v{version}: {ESCAPED}"]
    assert "\x1b" not in caplog.text

    stored = await _node(admin, "node-hostile")
    assert stored.last_nack_reason == ESCAPED
    shown = node_row(stored)
    assert ESCAPED in shown
    assert not any("\n" in str(cell) or "\x1b" in str(cell) for cell in shown)


def test_the_admin_cli_escapes_what_an_older_control_plane_stored_raw() -> None:
    row = node_row(
        admin_pb2.Node(node_id="n\x1b[1mode", software_version="1.0\r\nfake", last_nack_reason=HOSTILE)
    )
    assert row[0] == "n\\x1b[1mode"
    assert row[NODE_COLUMNS.index("version")] == "1.0\\r\\nfake"
    assert row[NODE_COLUMNS.index("reason")] == ESCAPED


async def test_a_node_id_with_control_characters_is_refused_with_the_field_named(
    control_plane: RunningControlPlane, caplog: pytest.LogCaptureFixture, private_tmp: Path
) -> None:
    async def requests() -> object:
        yield sync_pb2.NodeMessage(hello=sync_pb2.Hello(node_id="node-x\nERROR forged", software_version="1"))

    tls = await control_plane.enroll("node-x", private_tmp / "node-x")
    async with aio_channel(control_plane.node_address, tls) as channel:
        call = sync_pb2_grpc.ConfigSyncServiceStub(channel).Sync(requests(), timeout=TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert details.startswith("hello.node_id: must be 1..256 characters without control characters")
    assert "\n" not in details
    assert details.endswith('(got "node-x\\nERROR forged")')


async def _hello_only(
    control_plane: RunningControlPlane, tls: object, hello: sync_pb2.Hello
) -> tuple[grpc.StatusCode, str]:
    """Say ``hello`` and nothing more: how the stream ends (OK once an envelope came)."""

    async def requests() -> object:
        yield sync_pb2.NodeMessage(hello=hello)

    async with aio_channel(control_plane.node_address, tls) as channel:  # type: ignore[arg-type]
        call = sync_pb2_grpc.ConfigSyncServiceStub(channel).Sync(requests(), timeout=TIMEOUT)
        try:
            async for message in call:
                return grpc.StatusCode.OK, message.WhichOneof("message") or ""
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_an_applied_version_past_int64_is_refused_with_the_field_named(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    tls = await control_plane.enroll("node-huge", private_tmp / "node-huge")
    hello = sync_pb2.Hello(node_id="node-huge", software_version="1", applied_version=2**64 - 1)
    code, details = await _hello_only(control_plane, tls, hello)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details == f"hello.applied_version: at most {2**63 - 1} (got {2**64 - 1})"


async def test_a_hello_with_an_oversized_applied_hash_is_refused_with_the_field_named(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    await admin.seed()
    version = await admin.latest_version()
    tls = await control_plane.enroll("node-hash", private_tmp / "node-hash")
    # A version we signed with a different "hash": the claim check would log it in hex.
    hello = sync_pb2.Hello(
        node_id="node-hash", software_version="1", applied_version=version, applied_hash=b"h" * 1_000_000
    )
    code, details = await _hello_only(control_plane, tls, hello)
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "hello.applied_hash: at most 32 bytes (got 1000000)",
    )


async def test_a_hello_scope_with_nul_and_huge_strings_is_stored_escaped_and_bounded(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    await control_plane.ensure_group("racks", "on-prem", "rack-1")
    tls = await control_plane.enroll("node-scope", private_tmp / "node-scope", group="racks")
    # The site is the certificate's: a Hello naming another is refused, named escaped.
    scope = snapshot_pb2.Scope(site="rack\x00\u202e1" + "r" * 10_000)
    hello = sync_pb2.Hello(node_id="node-scope", software_version="1", scope=scope)
    code, details = await _hello_only(control_plane, tls, hello)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details.startswith('hello.scope.site: "rack\\x00\\u202e1rrr')
    assert len(details) < 200
    scope = snapshot_pb2.Scope(deployment="d\x00\u202e" + "d" * 10_000)
    hello = sync_pb2.Hello(node_id="node-scope", software_version="1", scope=scope)
    assert await _hello_only(control_plane, tls, hello) == (grpc.StatusCode.OK, "envelope")
    stored = await _node(admin, "node-scope")
    assert stored.site == "rack-1"
    assert stored.deployment.startswith("d\\x00\\u202e" + "d" * 80)
    assert len(stored.deployment) < 130


@pytest.mark.parametrize(
    "version", ["é" * 201, "1.0-" + "x" * 5000, "\x1b" * 100], ids=["non-ascii", "long", "escapes"]
)
async def test_a_software_version_longer_than_its_column_is_stored_clipped_to_it(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path, version: str
) -> None:
    # Clipped to 100 characters and its note added after, it was 119: a write the column
    # refused, so the Hello (and every reconnect of the node) ended INTERNAL.
    tls = await control_plane.enroll("node-version", private_tmp / "node-version")
    hello = sync_pb2.Hello(node_id="node-version", software_version=version)
    assert await _hello_only(control_plane, tls, hello) == (grpc.StatusCode.OK, "envelope")
    stored = (await _node(admin, "node-version")).software_version
    assert len(stored) <= MAX_VERSION_CHARS
    assert stored.startswith(printable(version)[:40])
    assert stored.endswith(" more chars]")


def test_printable_within_holds_the_note_inside_the_limit() -> None:
    for text in ("x" * 101, "\n" * 60, "é" * 10_000, "x" * 100):
        assert len(printable_within(text, 100)) <= 100
    assert printable_within("x" * 100, 100) == "x" * 100
    assert printable_within("short", 100) == "short"


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        (sync_pb2.NodeMessage(ack=sync_pb2.Ack(version=2**64 - 1)), "ack.version"),
        (sync_pb2.NodeMessage(nack=sync_pb2.Nack(version=2**63, reason="x")), "nack.version"),
        (
            sync_pb2.NodeMessage(nack=sync_pb2.Nack(version=1, payload_sha256=b"h" * 1_000_000)),
            "nack.payload_sha256",
        ),
        (sync_pb2.NodeMessage(ack=sync_pb2.Ack(version=1, payload_sha256=b"h" * 33)), "ack.payload_sha256"),
    ],
    ids=["ack-version", "nack-version", "nack-hash", "ack-hash"],
)
async def test_an_ack_or_nack_the_database_cannot_hold_ends_the_stream_naming_the_field(
    admin: Admin, sync_nodes: object, answer: sync_pb2.NodeMessage, field: str
) -> None:
    node: SyncNode = await sync_nodes("node-answers")  # type: ignore[operator]
    await node.next_envelope()
    node.outbox.put_nowait(answer)
    await asyncio.wait_for(node.ended.wait(), TIMEOUT)
    assert node.end_code == grpc.StatusCode.INVALID_ARGUMENT
    stored = await _node(admin, "node-answers")
    assert (stored.applied_version, stored.last_nack_version, stored.last_nack_reason) == (0, 0, "")
    assert (await node.call.details()).startswith(f"{field}: at most ")


async def test_a_node_repeating_one_nack_adds_one_refusal_row(
    admin: Admin, control_plane: RunningControlPlane, sync_nodes: object
) -> None:
    node: SyncNode = await sync_nodes("node-repeats")  # type: ignore[operator]
    envelope = await node.next_envelope()
    version = node.verified(envelope).version
    for i in range(50):
        node.nack(envelope, version, f"no {i}")
    rows = await _refusal_rows_after_ack(admin, control_plane, node, envelope, version)
    assert (await _node(admin, "node-repeats")).last_nack_reason == "no 49"
    assert len(rows) == 1


async def test_nacks_of_snapshots_never_published_add_no_refusal_rows(
    admin: Admin, control_plane: RunningControlPlane, sync_nodes: object
) -> None:
    # Each distinct (version, hash) a node made up was a row, loaded on its every reconnect.
    node: SyncNode = await sync_nodes("node-invents")  # type: ignore[operator]
    envelope = await node.next_envelope()
    version = node.verified(envelope).version
    for i in range(50):
        node.outbox.put_nowait(
            sync_pb2.NodeMessage(
                nack=sync_pb2.Nack(
                    version=version + 1 + i, payload_sha256=bytes([i]) * 32, reason=f"made up {i}"
                )
            )
        )
    node.nack(envelope, version, "a real one")
    assert await _refusal_rows_after_ack(admin, control_plane, node, envelope, version) == [version]


async def _refusal_rows_after_ack(
    admin: Admin,
    control_plane: RunningControlPlane,
    node: SyncNode,
    envelope: snapshot_pb2.SignedEnvelope,
    version: int,
) -> list[int]:
    """ACK ``version`` after what the test queued (the stream reads in order: once the ACK is
    recorded, so is everything before it), then the versions of the node's refusal rows."""
    node.ack(envelope, version)

    async def acked() -> bool:
        return (await _node(admin, node.node_id)).last_ack_version == version

    await eventually(acked, message="the ACK after the NACKs recorded")
    engine = sa.create_engine(control_plane.database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT version FROM node_nacks WHERE node_id = :n"), {"n": node.node_id}
            )
            return [row[0] for row in rows]
    finally:
        engine.dispose()
