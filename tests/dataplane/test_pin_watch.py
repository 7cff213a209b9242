"""Air-gapped pins without restarts: a node serving ``--snapshot FILE`` watches that path.

In process (real node, real gRPC, real upstreams on loopback) for what needs the
node's log records or its poll counter; ``test_pin_watch_process.py`` runs the same
story against a real ``signalbox dataplane serve`` process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.snapshot import pin_watch
from dataplane.snapshot.pin_watch import MAX_PIN_BYTES
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.shell.cli import main
from tests.dataplane.conftest import AUTH, GatedUpstream, NodeFactory, chat, envelope, snapshot
from tests.helpers import eventually

POLL = 0.05


def pin_bytes(key: Ed25519PrivateKey, version: int, base_url: str, **fields: Any) -> bytes:
    return envelope(snapshot(version, base_url, **fields), key).SerializeToString()


def write_atomically(path: Path, data: bytes) -> None:
    """What the README recommends: a temporary file beside the pin, then a rename."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def infer(node: DataPlaneNode) -> tuple[int, str]:
    async with grpc.aio.insecure_channel(node.address) as channel:
        response = await infer_pb2_grpc.InferServiceStub(channel).Infer(chat(), metadata=AUTH, timeout=10)
    return int(response.snapshot_version), response.model


async def pinned_node(start_node: NodeFactory, pin: Path, **overrides: Any) -> DataPlaneNode:
    node = await start_node(snapshot_file=pin, snapshot_poll_interval=POLL, **overrides)
    assert node.pin_watch is not None
    return node


async def more_polls(node: DataPlaneNode, count: int = 5) -> None:
    """Let the watcher look at the file ``count`` more times."""
    watcher = node.pin_watch
    assert watcher is not None
    target = watcher.polls + count
    await eventually(lambda: watcher.polls >= target, message=f"{count} more polls")


def messages(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.DEBUG) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage() and r.levelno >= level]


async def test_a_newer_pin_is_served_without_a_restart_and_persisted(
    tmp_path: Path, start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(pin_bytes(signing_key, 3, simulator.base_url))
    node = await pinned_node(start_node, pin)
    assert await infer(node) == (3, "sim-fast")

    v4 = pin_bytes(signing_key, 4, simulator.base_url, default_model="sim-smart")
    write_atomically(pin, v4)

    await eventually(lambda: node.store.version == 4, message="v4 applied")
    assert await infer(node) == (4, "sim-smart")
    # Persisted exactly as a pin at start: its bytes as last-known-good, the mark raised.
    lkg = tmp_path / "node" / "snapshot"
    assert (lkg / "lkg.envelope").read_bytes() == v4
    assert json.loads((lkg / "hwm.json").read_text())["version"] == 4


async def test_an_older_pin_is_refused_once_and_the_current_one_keeps_serving(
    tmp_path: Path,
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="signalbox.dataplane")
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(pin_bytes(signing_key, 4, simulator.base_url))
    node = await pinned_node(start_node, pin)
    watcher = node.pin_watch
    assert watcher is not None

    write_atomically(pin, pin_bytes(signing_key, 2, simulator.base_url, default_model="sim-smart"))
    await eventually(lambda: watcher.last_result is not None, message="v2 checked")
    assert watcher.last_result is not None
    assert not watcher.last_result.accepted
    assert "rollback" in watcher.last_result.reason
    # Touched again and again (new mtime each time): the same bytes are not checked again.
    for _ in range(3):
        os.utime(pin, ns=(time.time_ns(), time.time_ns()))
        await more_polls(node, 2)

    assert len(messages(caplog, "rollback: version 2", logging.WARNING)) == 1
    assert await infer(node) == (4, "sim-fast")
    assert json.loads((tmp_path / "node" / "snapshot" / "hwm.json").read_text())["version"] == 4


async def test_the_same_version_with_another_hash_is_an_alarm_and_refused(
    tmp_path: Path,
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="signalbox.dataplane")
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(pin_bytes(signing_key, 4, simulator.base_url))
    node = await pinned_node(start_node, pin)
    watcher = node.pin_watch
    assert watcher is not None

    write_atomically(pin, pin_bytes(signing_key, 4, simulator.base_url, default_model="sim-smart"))
    await eventually(lambda: watcher.last_result is not None, message="the other v4 checked")
    await more_polls(node)

    assert watcher.last_result is not None
    assert not watcher.last_result.accepted
    assert "conflict" in watcher.last_result.reason
    assert len(messages(caplog, "ALARM", logging.ERROR)) == 1
    assert await infer(node) == (4, "sim-fast")


async def test_every_prefix_of_a_pin_is_incomplete_never_a_rejection(
    tmp_path: Path, start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(pin_bytes(signing_key, 3, simulator.base_url))
    # Polled by hand here: every byte count an in-place copy can be caught at.
    node = await start_node(snapshot_file=pin, snapshot_poll_interval=3600.0)
    watcher = node.pin_watch
    assert watcher is not None
    v4 = pin_bytes(signing_key, 4, simulator.base_url)

    for cut in range(len(v4)):
        pin.write_bytes(v4[:cut])
        assert await watcher.poll() is None, f"a {cut}-byte prefix was handed to the store"

    assert node.store.last_rejection == ""
    assert node.store.version == 3
    pin.write_bytes(v4)
    result = await watcher.poll()
    assert result is not None
    assert result.accepted
    assert result.changed
    assert node.store.version == 4


async def test_a_garbage_or_half_written_pin_is_survived_then_a_good_one_is_applied(
    tmp_path: Path,
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="signalbox.dataplane")
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(pin_bytes(signing_key, 3, simulator.base_url))
    node = await pinned_node(start_node, pin)
    v4 = pin_bytes(signing_key, 4, simulator.base_url, default_model="sim-smart")

    # An operator copying over the pin in place: garbage first, then a half-written file.
    with pin.open("r+b") as f:
        f.truncate(0)
        f.write(b"\xff" * 64)
    await more_polls(node)
    with pin.open("r+b") as f:
        f.truncate(0)
        f.write(v4[: len(v4) // 2])
    await more_polls(node)
    assert await infer(node) == (3, "sim-fast")
    assert node.store.last_rejection == ""
    # One line for the whole episode, however many polls saw it.
    assert len(messages(caplog, "not a complete signed envelope", logging.WARNING)) == 1

    with pin.open("r+b") as f:
        f.seek(len(v4) // 2)
        f.write(v4[len(v4) // 2 :])
    await eventually(lambda: node.store.version == 4, message="the completed file applied")
    assert await infer(node) == (4, "sim-smart")


async def test_a_pin_larger_than_the_limit_is_not_read(
    tmp_path: Path,
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="signalbox.dataplane")
    pin = tmp_path / "site.snapshot"
    v3 = pin_bytes(signing_key, 3, simulator.base_url)
    pin.write_bytes(v3)
    node = await pinned_node(start_node, pin)

    with pin.open("r+b") as f:
        f.truncate(MAX_PIN_BYTES + 1)  # sparse: costs no disk, but would cost the memory if read
    await more_polls(node)

    assert await infer(node) == (3, "sim-fast")
    assert len(messages(caplog, "more than the", logging.WARNING)) == 1
    write_atomically(pin, pin_bytes(signing_key, 4, simulator.base_url))
    await eventually(lambda: node.store.version == 4, message="v4 applied after the oversized file")


async def test_a_missing_pin_keeps_the_node_serving(
    tmp_path: Path, start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(pin_bytes(signing_key, 3, simulator.base_url))
    node = await pinned_node(start_node, pin)

    pin.unlink()
    await more_polls(node)
    assert await infer(node) == (3, "sim-fast")
    # A FIFO in its place: never opened (a read could block the node's stop forever).
    os.mkfifo(pin)
    await more_polls(node)
    assert await infer(node) == (3, "sim-fast")
    pin.unlink()
    write_atomically(pin, pin_bytes(signing_key, 4, simulator.base_url))
    await eventually(lambda: node.store.version == 4, message="v4 applied after the gap")


async def test_a_stream_in_flight_during_the_swap_finishes_on_the_old_snapshot(
    tmp_path: Path, start_node: NodeFactory, gated_upstream: GatedUpstream, signing_key: Ed25519PrivateKey
) -> None:
    def pin_for(version: int) -> bytes:
        return pin_bytes(signing_key, version, gated_upstream.base_url, provider_type="openai_compatible")

    pin = tmp_path / "site.snapshot"
    pin.write_bytes(pin_for(3))
    node = await pinned_node(start_node, pin)
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        call = stub.InferStream(chat(), metadata=AUTH, timeout=10)
        assert (await call.read()).HasField("start")
        assert (await call.read()).delta.text == "first "

        write_atomically(pin, pin_for(4))
        await eventually(lambda: node.store.version == 4, message="v4 applied under an open stream")
        gated_upstream.release.set()
        events = []
        while (event := await call.read()) is not grpc.aio.EOF:
            events.append(event)

        assert events[-1].HasField("end")
        assert events[-1].end.snapshot_version == 3
        assert "".join(e.delta.text for e in events if e.HasField("delta")) == "second"
        after = [e async for e in stub.InferStream(chat(), metadata=AUTH, timeout=10)]
        assert after[-1].end.snapshot_version == 4


async def test_an_expired_pin_served_with_allow_expired_is_warned_about_at_start(
    tmp_path: Path,
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="signalbox.dataplane")
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(pin_bytes(signing_key, 3, simulator.base_url, expires_at=time.time() - 3600))

    node = await pinned_node(start_node, pin, allow_expired=True)

    assert await infer(node) == (3, "sim-fast")
    warnings = messages(caplog, "--allow-expired is set", logging.WARNING)
    assert len(warnings) == 1
    assert "snapshot 3" in warnings[0]


async def test_an_unexpired_pin_with_allow_expired_is_not_warned_about(
    tmp_path: Path,
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="signalbox.dataplane")
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(pin_bytes(signing_key, 3, simulator.base_url, expires_at=time.time() + 3600))

    node = await pinned_node(start_node, pin, allow_expired=True)

    assert node.store.version == 3
    assert messages(caplog, "--allow-expired is set") == []


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_serve_refuses_a_poll_interval_that_is_not_positive(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dataplane", "serve", "--snapshot-poll-interval", value]) == 2
    assert "--snapshot-poll-interval" in capsys.readouterr().err


async def test_a_pin_swapped_for_a_fifo_between_its_check_and_its_read_neither_blocks_nor_is_read(
    tmp_path: Path,
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The watcher checks the path is a regular file, then reads it: a FIFO renamed in between
    (the race an attacker with the pin's directory wins) must be refused on what was opened,
    not waited on for a writer (the watcher stuck, the node's stop waiting for it forever)."""
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(pin_bytes(signing_key, 3, simulator.base_url))
    node = await pinned_node(start_node, pin)
    checked = pin_watch.fingerprint
    swap = [True]

    def fingerprint_then_swap(path: Path) -> pin_watch.Fingerprint:
        seen = checked(path)
        if swap and seen[1] != len(pin_bytes(signing_key, 3, simulator.base_url)):
            swap.clear()
            fifo = path.with_name("planted.fifo")
            os.mkfifo(fifo)
            os.replace(fifo, path)  # after the check, before the read
        return seen

    monkeypatch.setattr(pin_watch, "fingerprint", fingerprint_then_swap)
    write_atomically(pin, pin_bytes(signing_key, 4, simulator.base_url, default_model="sim-smart"))
    try:
        await eventually(lambda: not swap, message="the pin swapped after its check")
        await more_polls(node, 3)
        assert await infer(node) == (3, "sim-fast")
    finally:
        with contextlib.suppress(OSError):
            # A reader stuck opening the FIFO is let go (EOF), so the test can end.
            os.close(os.open(pin, os.O_WRONLY | os.O_NONBLOCK))
    pin.unlink()
    write_atomically(pin, pin_bytes(signing_key, 4, simulator.base_url, default_model="sim-smart"))
    await eventually(lambda: node.store.version == 4, message="v4 applied after the FIFO")
