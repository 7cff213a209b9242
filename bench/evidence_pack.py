"""Evidence Packs: how long the control plane takes to export a large pack, and how fast
``signalbox evidence verify`` checks it offline.

    .venv/bin/python bench/evidence_pack.py                      # 100,000 records
    .venv/bin/python bench/evidence_pack.py --records 5000       # smoke run

A control plane runs in this process on embedded PostgreSQL (a fresh data dir). One node is
enrolled for real; its ``EvidenceLog`` writes the records (request-like fields, ~900 bytes
each) and signs a checkpoint every ``--checkpoint-every`` records with the certified node
key; the chain ships over the real Ship stream (mutual TLS), checkpoints included, so the
store holds exactly what production ingest would. Then the whole chain is exported through
the Admin API (``ExportEvidence``, the same code as ``signalbox admin evidence export``) and
verified with ``dataplane.evidence.pack_verify.verify`` (what ``signalbox evidence verify`` runs),
twice: once as exported and once with a single byte changed in the middle of the file
(which must fail). Printed: export seconds and MB, verify seconds and records/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlplane.app import ControlPlane, ControlPlaneSettings
from controlplane.services.base import Caller
from dataplane.evidence import checkpoint, pack, pack_verify, segments
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.identity import IdentityFiles, enroll
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.evidence.v1 import evidence_pb2, evidence_pb2_grpc
from signalbox.tls import ClientTls, aio_channel

NODE = "bench-pack"


def fields(i: int) -> dict[str, object]:
    return {
        "ts": time.time(),
        "kind": "infer",
        "correlation_id": f"{NODE}-{i:08d}",
        "tenant_id": f"tenant-{i % 50}",
        "api_key_id": f"key-{i % 500}",
        "snapshot": {"version": 12, "sha256": "ab" * 32},
        "policy": {"id": "p-1", "version": 3},
        "routing": {
            "rule": "default",
            "strategy": "cost",
            "reason": "cheapest capable model",
            "candidates": ["small", "large"],
            "served_by": {"model": "small", "provider": "sim", "deployment": "sim/small-v1"},
            "attempts": [{"model": "small", "provider": "sim", "outcome": "ok", "duration_ms": 12.5}],
        },
        "timings": {"total_ms": 13.1, "dispatch_ms": 12.6, "first_chunk_ms": None},
        "usage": {"input_tokens": 12, "output_tokens": 40},
        "cost": {"currency": "USD", "input_nanos": 120, "output_nanos": 800, "total_nanos": 920},
        "outcome": {"code": "OK" if i % 10 else "PERMISSION_DENIED", "message": "", "error": None},
        "request_sha256": "cd" * 32,
        "response_sha256": "ef" * 32,
    }


async def run(args: argparse.Namespace, root: Path) -> None:
    settings = ControlPlaneSettings(
        listen="127.0.0.1:0", node_listen="127.0.0.1:0", data_dir=root, max_message_bytes=64 << 20
    )
    async with ControlPlane(settings) as cp:
        assert cp.identities is not None
        assert cp.admin is not None
        assert cp.signer is not None
        _, token = await cp.identities.create_token(
            Caller("", "bench"), group="default", ttl=timedelta(hours=1)
        )
        files = IdentityFiles(root / NODE)
        await enroll(files, address=cp.address, tls=ClientTls(), token=token, node_id=NODE)
        path = log_path(root / NODE, NODE)
        started = time.perf_counter()
        async with EvidenceLog(path, NODE, signer=files.private_key(), checkpoint_records=10**9) as log:
            for i in range(1, args.records + 1):
                log.append(fields(i))
                if i % args.checkpoint_every == 0:
                    await log.checkpoint()
        # Every segment: the log starts a new file beyond 64 MiB (~55,000 of these records).
        lines = b"".join(seg.path.read_bytes() for seg in segments.all_segments(path)).splitlines(
            keepends=True
        )
        notes = [n.decode() for n in checkpoint.read_notes(checkpoint.checkpoints_path(path))]
        print(
            f"{len(lines):,} records written and signed in {time.perf_counter() - started:.2f} s", flush=True
        )

        started = time.perf_counter()
        async with aio_channel(
            cp.node_address, files.client_tls(), options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            outbox: asyncio.Queue[evidence_pb2.ShipBatch | None] = asyncio.Queue()

            async def requests():  # type: ignore[no-untyped-def]
                while (b := await outbox.get()) is not None:
                    yield b

            call = evidence_pb2_grpc.EvidenceServiceStub(channel).Ship(requests())
            for start in range(0, len(lines), 2000):
                end = min(len(lines), start + 2000)
                covered = [n for n in notes if start < checkpoint.parse(n.encode()).size <= end]
                outbox.put_nowait(
                    evidence_pb2.ShipBatch(
                        chain_id=f"{NODE}/0", records=lines[start:end], checkpoints=covered
                    )
                )
                ack = await call.read()
                if ack.HasField("error") or ack.head_seq != end:
                    raise SystemExit(f"unexpected answer {ack}")
            outbox.put_nowait(None)
        print(f"shipped over the Ship stream in {time.perf_counter() - started:.2f} s", flush=True)

        _, admin_token = await cp.admin.create_token("bench-export")
        out = root / "bench.pack"
        started = time.perf_counter()
        async with aio_channel(
            cp.address, ClientTls(), options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            pieces, first = [], True
            async for chunk in stub.ExportEvidence(
                admin_pb2.ExportEvidenceRequest(), metadata=(("authorization", f"Bearer {admin_token}"),)
            ):
                if first:
                    first = False
                    continue
                pieces.append(chunk.data)
            out.write_bytes(b"".join(pieces))
        exported = time.perf_counter() - started
        size = out.stat().st_size
        print(f"export (Admin API, to a file)                 {exported:.2f} s  {size / 1e6:.1f} MB")

        trusted = {cp.signer.key_id: cp.signer.public_key}
        if args.profile:
            import cProfile
            import pstats

            with cProfile.Profile() as profile:
                pack_verify.verify(out, trusted)
            pstats.Stats(profile).sort_stats("tottime").print_stats(12)
        started = time.perf_counter()
        report = pack_verify.verify(out, trusted)
        verified = time.perf_counter() - started
        assert report.records == len(lines), report.records
        print(
            f"verify (offline)                              {verified:.2f} s  {report.records / verified:,.0f} records/s"
        )

        data = bytearray(out.read_bytes())
        data[len(data) // 2] ^= 0x01
        flipped = root / "flipped.pack"
        flipped.write_bytes(bytes(data))
        started = time.perf_counter()
        try:
            pack_verify.verify(flipped, trusted)
        except pack.PackInvalid as exc:
            print(f"one changed byte: refused in {time.perf_counter() - started:.2f} s: {str(exc)[:110]}")
        else:
            raise SystemExit("a changed byte verified")


async def main(args: argparse.Namespace) -> None:
    tmp = tempfile.TemporaryDirectory(prefix="pack-bench-")
    # Traversable: embedded PostgreSQL runs as its own user when we are root.
    os.chmod(tmp.name, 0o711)
    with tmp:
        await run(args, Path(tmp.name))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--checkpoint-every", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true", help="print where verify spends its time")
    arguments = parser.parse_args()
    os.environ.setdefault("SIGNALBOX_LOG_LEVEL", "WARNING")
    asyncio.run(main(arguments))
