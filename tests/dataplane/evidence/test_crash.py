"""Acceptance: a real node process under a closed-loop load is SIGKILLed and restarted.
Every request that got an answer (served or refused) has its record, matched by the evidence
id the answer carried; the chain verifies, every checkpoint verifies and is consistent with
the next, and inclusion proofs of the answered records verify."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.evidence import checkpoint, merkle
from dataplane.evidence.log import log_path
from dataplane.evidence.proofs import Chain, InclusionProof, verify_chain_files
from dataplane.evidence.records import read_records
from dataplane.identity import IdentityFiles
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import AUTH, chat, pinned_serve_args
from tests.dataplane.test_pin_watch_process import site_pin
from tests.helpers import eventually

NODE = "node-crash"
WORKERS = 8


class NodeProcess:
    """``signalbox dataplane serve`` pinned, its stderr collected."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> str:
        self.lines = []
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "signalbox", *self.args, stderr=asyncio.subprocess.PIPE
        )
        stderr = self.process.stderr
        assert stderr is not None

        async def collect() -> None:
            while line := await stderr.readline():
                self.lines.append(line.decode(errors="replace"))

        self._reader = asyncio.get_running_loop().create_task(collect())
        return await eventually(
            lambda: next((m[1] for ln in self.lines if (m := re.search(r"listening on (\S+),", ln))), ""),
            timeout=30,
            message="node listening",
        )

    async def wait(self) -> int:
        assert self.process is not None
        assert self._reader is not None
        code = await asyncio.wait_for(self.process.wait(), 30)
        await self._reader
        return code

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.wait()


async def _load(address: str, answered: dict[str, str], stop: asyncio.Event) -> None:
    """One closed-loop caller: a request, its answer, the next; every fifth one unauthenticated
    (a refusal also carries its record's id). Ends when the node goes away."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        n = 0
        while not stop.is_set():
            n += 1
            call = stub.Infer(chat(f"request {n}"), metadata=AUTH if n % 5 else (), timeout=10)
            try:
                await call
                trailers = await call.trailing_metadata()
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAUTHENTICATED:
                    return  # the node was killed: this request got no answer
                trailers = exc.trailing_metadata()
            meta: dict[str, Any] = dict(trailers or ())
            assert meta["signalbox-evidence"] == "written"
            answered[str(meta["signalbox-evidence-id"])] = "OK" if n % 5 else "UNAUTHENTICATED"


def pinned_node_process(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any, *flags: str
) -> tuple[NodeProcess, Path]:
    """A node process (not started) serving a signed pin, node id ``NODE``; and its data dir."""
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(site_pin(signing_key, 3, simulator.base_url))
    data_dir = tmp_path / "node"
    return NodeProcess(pinned_serve_args(pin, trust_key, data_dir, "--node-id", NODE, *flags)), data_dir


async def test_sigkill_under_load_loses_no_answered_record(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    node, data_dir = pinned_node_process(
        tmp_path,
        trust_key,
        signing_key,
        simulator,
        "--evidence-checkpoint-records",
        "40",
        "--evidence-checkpoint-ms",
        "100",
    )
    path = log_path(data_dir, NODE)
    answered: dict[str, str] = {}
    try:
        address = await node.start()
        stop = asyncio.Event()
        callers = [
            asyncio.get_running_loop().create_task(_load(address, answered, stop)) for _ in range(WORKERS)
        ]
        await eventually(
            lambda: (
                len(answered) >= 400 and len(checkpoint.read_notes(checkpoint.checkpoints_path(path))) >= 3
            ),
            timeout=60,
            message="load answered and checkpoints signed",
        )
        await node.kill()  # SIGKILL while every caller has a request in flight
        await asyncio.gather(*callers)
        killed_with = len(answered)

        # Restarted: the chain continues where the killed process left it.
        address = await node.start()
        stop = asyncio.Event()
        after = asyncio.get_running_loop().create_task(_load(address, answered, stop))
        await eventually(lambda: len(answered) >= killed_with + 20, message="answers after the restart")
        stop.set()
        await after
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        assert await node.wait() == 0
    finally:
        await node.kill()

    records = {r["record_id"]: r for r in read_records(path)}
    missing = [rid for rid in answered if rid not in records]
    assert not missing, f"{len(missing)} answered requests have no record"
    assert all(records[rid]["outcome"]["code"] == code for rid, code in answered.items())

    key = IdentityFiles.under(data_dir).private_key().public_key()
    report = verify_chain_files(path, key)
    assert report.chain_id == f"{NODE}/0"
    assert report.signed_size == report.records  # the clean stop signed the last records
    assert report.checkpoints >= 4

    chain = Chain.read(path)
    last = checkpoint.verify(chain.notes[-1], key)
    leaves = chain.leaves()
    index = {r["record_id"]: i for i, r in enumerate(chain.records)}
    for rid in answered:
        i = index[rid]
        proof = InclusionProof(
            bytes.fromhex(chain.records[i]["hash"]),
            i,
            merkle.inclusion_proof(leaves, i, last.size),
            chain.notes[-1],
        )
        assert proof.verify(key).size == last.size

    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        "dataplane",
        "evidence",
        "verify",
        "--data-dir",
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await cli.communicate()
    assert cli.returncode == 0
    assert out.decode().startswith(f"OK {NODE}/0 records={report.records} ")
