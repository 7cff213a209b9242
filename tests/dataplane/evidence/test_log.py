"""Evidence: one chained record per request, served or refused; gap-free across restarts;
tampering detected; no secrets or content."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import segments
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.records import read_records, seal, verify_chain
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import API_KEY, AUTH, GatedUpstream, NodeFactory, chat, envelope, snapshot
from tests.helpers import eventually, wait_until

SECRET_PROMPT = "the launch code is swordfish-7781"


async def test_one_record_per_request_served_or_refused(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    node = await start_node()
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        # Refused before any snapshot: still one record.
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Infer(chat(SECRET_PROMPT, correlation_id="cid-early"), metadata=AUTH, timeout=10)
        assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
        ok = await stub.Infer(chat(SECRET_PROMPT, correlation_id="cid-ok"), metadata=AUTH, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as noauth:
            await stub.Infer(chat(SECRET_PROMPT, correlation_id="cid-noauth"), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Infer(
                chat(SECRET_PROMPT, correlation_id="cid-deny", model="sim-secret"), metadata=AUTH, timeout=10
            )
        events = [
            e
            async for e in stub.InferStream(
                chat(SECRET_PROMPT, correlation_id="cid-stream"), metadata=AUTH, timeout=10
            )
        ]
    path = log_path(tmp_path / "node", "node-test")
    records = list(read_records(path))
    assert [r["correlation_id"] for r in records] == [
        "cid-early",
        "cid-ok",
        "cid-noauth",
        "cid-deny",
        "cid-stream",
    ]
    assert [r["outcome"]["code"] for r in records] == [
        "UNAVAILABLE",
        "OK",
        "UNAUTHENTICATED",
        "NOT_FOUND",  # a model the tenant may not use is, to the tenant, unknown
        "OK",
    ]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert verify_chain(path).seq == 5

    served = records[1]
    assert served["record_id"] == ok.evidence_id
    assert served["node_id"] == "node-test"
    assert served["tenant_id"] == "t-acme"
    assert served["api_key_id"] == "k-acme"
    assert served["snapshot"]["version"] == 1
    assert served["policy"] == {"id": "pol-acme", "version": 1}
    assert served["routing"]["served_by"]["model"] == "sim-fast"
    assert served["routing"]["attempts"][0]["outcome"] == "ok"
    assert served["usage"]["output_tokens"] == ok.usage.output_tokens
    assert served["cost"]["total_nanos"] == ok.cost.total_nanos
    assert len(served["request_sha256"]) == 64
    assert len(served["response_sha256"]) == 64
    assert records[4]["record_id"] == events[-1].end.evidence_id
    assert ("x-evidence-id", records[2]["record_id"]) in tuple(noauth.value.trailing_metadata() or ())
    assert records[4]["kind"] == "stream"

    text = path.read_text()
    assert SECRET_PROMPT not in text
    assert API_KEY not in text
    assert ok.message.content[0].text not in text


async def test_sequence_continues_across_restart(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    for expected_last in (2, 4):
        node = await start_node()
        if node.store.current is None:
            assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = infer_pb2_grpc.InferServiceStub(channel)
            for _ in range(2):
                await stub.Infer(chat(), metadata=AUTH, timeout=10)
        await node.stop()
        assert verify_chain(log_path(tmp_path / "node", "node-test")).seq == expected_last


async def test_cancelled_stream_is_recorded(
    start_node: NodeFactory, gated_upstream: GatedUpstream, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    node = await start_node()
    snap = snapshot(1, gated_upstream.base_url, provider_type="openai_compatible")
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        call = infer_pb2_grpc.InferServiceStub(channel).InferStream(
            chat(correlation_id="cid-gone"), metadata=AUTH, timeout=10
        )
        await call.read()
        await call.read()
        call.cancel()
        path = log_path(tmp_path / "node", "node-test")
        await eventually(
            lambda: path.exists() and any(True for _ in read_records(path)), message="record written"
        )
    (record,) = read_records(path)
    assert record["correlation_id"] == "cid-gone"
    assert record["outcome"]["code"] == "CANCELLED"


async def test_shadow_call_gets_its_own_record(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    mirror = {"name": "mirror", "models": ["sim-fast"], "shadow": {"model": "sim-smart", "share": 1.0}}
    node = await start_node()
    snap = snapshot(1, simulator.base_url, rules=[mirror])
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        response = await stub.Infer(chat(correlation_id="cid-mirror"), metadata=AUTH, timeout=10)
    assert response.model == "sim-fast"
    path = log_path(tmp_path / "node", "node-test")
    await eventually(lambda: len(list(read_records(path))) == 2, message="shadow record")
    records = {r["kind"]: r for r in read_records(path)}
    assert records["shadow"]["correlation_id"] == "cid-mirror"
    assert records["shadow"]["routing"]["served_by"]["model"] == "sim-smart"
    assert records["shadow"]["outcome"]["code"] == "OK"
    assert simulator.stats("sim-smart").chat == 1
    verify_chain(path)


async def test_torn_last_line_is_cut_and_the_chain_continues(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    async with EvidenceLog(path, "n") as log:
        log.append({"x": 1})
        log.append({"x": 2})
    path.write_bytes(path.read_bytes() + b'{"record_id": "half-writ')
    async with EvidenceLog(path, "n") as log:
        assert log.head.seq == 2
        log.append({"x": 3})
    assert verify_chain(path).seq == 3


async def test_durable_seq_is_the_last_fsynced_record(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    async with EvidenceLog(path, "n") as log:
        log.append({"x": 1})
        log.append({"x": 2})
    # A long interval: after its first round the sync task sleeps, so nothing else syncs.
    log = EvidenceLog(path, "n", fsync_interval=3600)
    await log.start()
    try:
        assert log.durable_seq == 2  # what a start recovers is synced before it is shipped
        log.append({"x": 3})
        await eventually(lambda: log.durable_seq == 3, message="the first round syncs record 3")
        log.append({"x": 4})
        log.append({"x": 5})
        assert log.durable_seq == 3  # written to the OS, not yet on disk: not to be shipped
    finally:
        await log.aclose()
    assert log.durable_seq == 5  # closing syncs the rest


async def test_records_become_durable_without_the_event_loop(tmp_path: Path) -> None:
    # The sync thread takes the head, syncs and says so by itself: durable_seq advances while
    # the event loop is busy (blocked in wait_until here); the loop only wakes the thread.
    def sync_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "evidence-fsync by-thread/0"]

    async with EvidenceLog(tmp_path / "n.jsonl", "by-thread") as log:
        for i in range(3):
            log.append({"x": i})
        await asyncio.sleep(0)  # one turn of the loop: the thread is woken after the appending step
        wait_until(lambda: log.durable_seq == 3, message="the sync thread synced records 1-3")
        log.append({"x": 3})
        await asyncio.sleep(0)
        wait_until(lambda: log.durable_seq == 4, message="the next round synced record 4")
        assert len(sync_threads()) == 1
    assert not sync_threads()  # closing the log ends its thread


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder"])
async def test_tampering_is_detected(tamper: str, tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    async with EvidenceLog(path, "n") as log:
        for i in range(4):
            log.append({"x": i})
    lines = path.read_bytes().splitlines(keepends=True)
    if tamper == "edit":
        record = json.loads(lines[1])
        record["x"] = 99
        lines[1] = json.dumps(record).encode() + b"\n"
    elif tamper == "delete":
        del lines[1]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    with pytest.raises(EvidenceChainBroken, match="line 2"):
        verify_chain(path)


async def test_a_request_whose_record_cannot_be_written_is_not_answered(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    # A real full disk: the log path is /dev/full, where every write fails with ENOSPC.
    path = log_path(tmp_path / "node", "node-test")
    path.parent.mkdir(parents=True)
    path.symlink_to("/dev/full")
    node = await start_node()
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Infer(chat(correlation_id="cid-full"), metadata=AUTH, timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "cannot write evidence" in (info.value.details() or "")
        # A refusal keeps its own status even though its record is lost too.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Infer(chat(), timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_last_record_without_its_hash_member_refuses_the_start(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    async with EvidenceLog(path, "n") as log:
        log.append({"x": 1})
        log.append({"x": 2})
    lines = path.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[-1])
    del record["hash"]  # still a record of this chain, with an integer seq
    lines[-1] = json.dumps(record).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    with pytest.raises(EvidenceChainBroken, match="last record's hash does not match its content"):
        await EvidenceLog(path, "n").start()


async def test_a_tampered_tail_refuses_to_extend_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    async with EvidenceLog(path, "n") as log:
        log.append({"x": 1})
    record = json.loads(path.read_bytes())
    record["x"] = 2
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(EvidenceChainBroken, match="last record"):
        await EvidenceLog(path, "n").start()


def _damage_middle(lines: list[bytes], damage: str) -> None:
    if damage == "garbage":
        lines[2] = b"\x00\x00 not a record\n"
    elif damage == "no-hash":
        lines[2] = b'{"x":2}\n'
    elif damage == "edited":
        lines[2] = lines[2].replace(b'"x":2', b'"x":9')
    elif damage == "reordered":
        lines[2], lines[3] = lines[3], lines[2]
    else:
        del lines[2]
        lines.insert(3, lines[2])  # one dropped, a later one doubled: the count still fits


@pytest.mark.parametrize("damage", ["garbage", "no-hash", "edited", "reordered", "dropped-and-doubled"])
async def test_a_record_damaged_in_the_middle_refuses_the_start_naming_its_line(
    damage: str, tmp_path: Path
) -> None:
    # No signer: no checkpoint covers these records (as after a crash, before the next
    # checkpoint), so only the records themselves can tell the chain is broken.
    path = tmp_path / "n.jsonl"
    async with EvidenceLog(path, "n") as log:
        for i in range(6):
            log.append({"x": i})
    lines = path.read_bytes().splitlines(keepends=True)
    _damage_middle(lines, damage)
    path.write_bytes(b"".join(lines))
    with pytest.raises(EvidenceChainBroken, match=rf"{path}: line 3: "):
        await EvidenceLog(path, "n").start()
    assert path.read_bytes() == b"".join(lines)  # nothing appended to the broken chain


@pytest.mark.parametrize("seq", [None, "2", 2.0, True, 0])
async def test_a_last_record_without_an_integer_seq_refuses_the_start(seq: Any, tmp_path: Path) -> None:
    # Sealed again, so its own hash verifies: only its seq is wrong.
    path = tmp_path / "n.jsonl"
    async with EvidenceLog(path, "n") as log:
        log.append({"x": 1})
        log.append({"x": 2})
    lines = path.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[-1])
    if seq is None:
        del record["seq"]
    else:
        record["seq"] = seq
    lines[-1] = seal(record)
    path.write_bytes(b"".join(lines))
    with pytest.raises(EvidenceChainBroken, match=r"last record's seq .* is not a positive integer"):
        await EvidenceLog(path, "n").start()


DEEP = b'{"x":' + b"[" * 3000 + b"]" * 3000 + b"}"
"""Valid JSON, 6 KB, nested deeper than json.loads (or msgspec) can go on the stack."""


@pytest.mark.parametrize("where", ["base", "middle", "last"])
async def test_json_nested_too_deep_on_disk_refuses_the_start_naming_the_file(
    where: str, tmp_path: Path
) -> None:
    path = tmp_path / "n.jsonl"
    async with EvidenceLog(path, "n") as log:
        for i in range(3):
            log.append({"x": i})
    lines = path.read_bytes().splitlines(keepends=True)
    if where == "base":
        segments.base_path(path).write_bytes(DEEP)
        named = f"{segments.base_path(path)}: not JSON \\(nested too deep\\)"
    elif where == "middle":
        lines[1] = DEEP + b"\n"
        named = f"{path}: line 2: not JSON \\(nested too deep\\)"
    else:
        lines[-1] = DEEP + b"\n"
        named = f"{path}: last record is not JSON: nested too deep"
    path.write_bytes(b"".join(lines))
    with pytest.raises(EvidenceChainBroken, match=named):
        await EvidenceLog(path, "n").start()


async def test_a_long_torn_tail_is_found_reading_the_segment_a_few_times_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search back for the last whole record read a chunk further each time, and the whole
    tail again each time: 20 MB without a newline took 1.5 s to start from, 64 MB ~15 s."""
    path = tmp_path / "n.jsonl"
    async with EvidenceLog(path, "n") as log:
        log.append({"x": 1})
        log.append({"x": 2})
    path.write_bytes(path.read_bytes() + b'{"record_id": "' + b"x" * 4_000_000)
    size = path.stat().st_size
    read = 0
    opened = segments.open_regular

    class Counting:
        def __init__(self, f: Any) -> None:
            self._f = f

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

        def __iter__(self) -> Any:
            for line in self._f:
                nonlocal read
                read += len(line)
                yield line

        def seek(self, at: int) -> int:
            return int(self._f.seek(at))

        def read(self, n: int = -1) -> bytes:
            nonlocal read
            data = self._f.read(n)
            read += len(data)
            return bytes(data)

    monkeypatch.setattr(segments, "open_regular", lambda p: Counting(opened(p)))
    async with EvidenceLog(path, "n") as log:
        assert log.head.seq == 2
        log.append({"x": 3})
    assert verify_chain(path).seq == 3
    assert read < 5 * size, f"{read / size:.1f} times the segment read to recover it"
