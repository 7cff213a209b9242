"""What governance costs a request: the default profile on 1, 4 and 32 KB prompts (the step
called directly), and streaming chunks/s through a real node with output rules on and off.

    .venv/bin/python bench/governance_cost.py                  # 2000 requests per size, 20 streams
    .venv/bin/python bench/governance_cost.py --requests 50 --streams 2 --chunks 200   # smoke run

**Per request.** The default profile (``DEFAULT_PROFILE``: e-mail, phone, payment card and
IBAN redacted; credentials redacted; IP addresses flagged) governs one chat request whose
user message is a business-like text of the given size with a few findings of each kind per
KB; what is timed is ``Governance.begin`` + ``govern_input`` (every input rule over every
text, the rebuilt request, the evidence entries), as the pipeline calls them. p50 and p99 in
microseconds over ``--requests`` runs after a warm-up, and the p50 of the thread's CPU time.
Each request carries a new copy of the prompt, as a real one does (what detectors keep per
text object must not carry over). "none" is the same call on a snapshot with no profile at
all: what a node without governance pays (one dict check).

**Streaming.** An in-process node (gRPC door, the real OpenAI-compatible adapter) streams
``--chunks`` chunks of a few words each from a local SSE upstream, ``--streams`` times per
variant, the variants interleaved: no profile, and a profile whose output rules (terms and
e-mail blocked, payment cards redacted) look behind the default window of 256 characters.
Reported: median chunks/s per variant and the ratio. Each variant's stream also goes through
the pipeline's own steps (evidence and accounting), so the ratio is what a caller sees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dataplane.app import DataPlaneNode
from dataplane.chat import ChatRequest, Message, Role, TextPart
from dataplane.config.model import RuntimeConfig, Scope, TenantConfig
from dataplane.governance import detect, enforce
from dataplane.governance.enforce import Governance
from dataplane.node_settings import NodeSettings
from dataplane.snapshot.compile import compile_payload
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import AUTH, chat, envelope, snapshot, write_public_key

DEFAULT_PROFILE: dict[str, Any] = {
    "input": {
        "rules": [
            {"name": "email", "detector": "email", "action": "redact"},
            {"name": "phone", "detector": "phone", "action": "redact"},
            {"name": "payment-card", "detector": "payment_card", "action": "redact"},
            {"name": "iban", "detector": "iban", "action": "redact"},
            {"name": "credential", "detector": "credential", "action": "redact"},
            {"name": "ip-address", "detector": "ip_address", "action": "flag"},
        ]
    }
}
OUTPUT_PROFILE: dict[str, Any] = {
    "output": {
        "rules": [
            {
                "name": "codename",
                "detector": "terms",
                "action": "block",
                "options": {"terms": ["falcon", "osprey"]},
            },
            {"name": "email", "detector": "email", "action": "block"},
            {"name": "payment-card", "detector": "payment_card", "action": "redact"},
        ]
    }
}

PARAGRAPH = (
    "Dear team, following our call on Tuesday the customer confirmed the revised delivery "
    "schedule for the northern warehouses. Please send the signed order to jane.doe@example.com "
    "and copy procurement. Payment goes to DE89370400440532013000 as agreed, card on file "
    "4111 1111 1111 1111 for the deposit. Call +49 30 901820 if anything changes; the staging "
    "host is 192.0.2.17. The rest of this note summarises the open items, the budget lines and "
    "the risks we discussed, none of which needs action before the end of the month. "
)


def prompt(size: int) -> str:
    return (PARAGRAPH * (size // len(PARAGRAPH) + 1))[:size]


def config(profile: dict[str, Any] | None) -> RuntimeConfig:
    snap = snapshot(1, "http://127.0.0.1:9")
    if profile is not None:
        snap.governance_profiles.add(id="gp", tenant_id="", version=1, document_json=json.dumps(profile))
    return compile_payload(snap.SerializeToString())


def per_request(requests: int) -> None:
    governance = Governance()
    tenant = TenantConfig("t-acme", "acme")
    # The step is compiled with mypyc in a built checkout (README.md, "Compiled modules").
    origin = enforce.__spec__.origin if enforce.__spec__ is not None else None
    print("governance modules:", "compiled (mypyc)" if origin and origin.endswith(".so") else "pure Python")
    print(f"{'prompt':>8}  {'findings':>8}  {'p50 us':>8}  {'p99 us':>8}  {'cpu p50 us':>10}")
    for label, cfg, size in (
        ("none", config(None), 4096),
        ("1 KB", config(DEFAULT_PROFILE), 1024),
        ("4 KB", config(DEFAULT_PROFILE), 4096),
        ("32 KB", config(DEFAULT_PROFILE), 32768),
    ):
        text = prompt(size)
        timings: list[float] = []
        cpu: list[float] = []
        findings = 0
        for i in range(requests + requests // 10):
            # A new request brings new strings: nothing a detector kept from the last
            # request's texts (keyed by the text object) may be reused.
            body = ChatRequest(
                (
                    Message(Role.SYSTEM, (TextPart("Be brief."),)),
                    Message(Role.USER, (TextPart(text[:-1] + text[-1]),)),
                )
            )
            actions: list[dict[str, Any]] = []
            started, started_cpu = time.perf_counter(), time.thread_time()
            governor = governance.begin(cfg, tenant)
            if governor is not None:
                governor.govern_input(body, actions)
            elapsed, elapsed_cpu = time.perf_counter() - started, time.thread_time() - started_cpu
            if i >= requests // 10:
                timings.append(elapsed * 1e6)
                cpu.append(elapsed_cpu * 1e6)
            findings = sum(a.get("count", 0) for a in actions)
        timings.sort()
        p50 = timings[len(timings) // 2]
        p99 = timings[min(len(timings) - 1, int(len(timings) * 0.99))]
        print(f"{label:>8}  {findings:>8}  {p50:>8.1f}  {p99:>8.1f}  {statistics.median(cpu):>10.1f}")
    # Where the time goes: each detector alone over the 4 KB prompt; the rest is the step's.
    # Each detector gets a new copy of the text per call, so each pays the digit-cluster
    # scan the detectors of one profile share (a profile pays it once per text).
    text = prompt(4096)
    print(f"\n{'detector':>14}  {'p50 us at 4 KB':>14}")
    for rule in DEFAULT_PROFILE["input"]["rules"]:
        detector = detect.build(rule["detector"], {})
        times = []
        for _ in range(max(20, requests // 4)):
            fresh = text[:-1] + text[-1]
            started = time.perf_counter()
            detector.find(fresh)
            times.append((time.perf_counter() - started) * 1e6)
        print(f"{rule['detector']:>14}  {statistics.median(times):>14.1f}")


async def streaming(streams: int, chunks: int) -> None:
    words = [f"w{i % 97:02d} item{i % 13} " for i in range(chunks)]

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for piece in words:
            event = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
            event["choices"] = [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    key = Ed25519PrivateKey.generate()
    rates: dict[str, list[float]] = {"rules off": [], "rules on": []}
    with tempfile.TemporaryDirectory() as tmp:
        trust = write_public_key(Path(tmp) / "trust.pem", key)
        nodes: dict[str, DataPlaneNode] = {}
        for variant, profile in (("rules off", None), ("rules on", OUTPUT_PROFILE)):
            settings = NodeSettings(
                listen="127.0.0.1:0",
                trust_keys=(trust,),
                node_id=f"bench-{len(nodes)}",
                data_dir=Path(tmp) / f"node{len(nodes)}",
                scope=Scope(deployment="test"),
            )
            node = nodes[variant] = DataPlaneNode(settings)
            await node.start()
            snap: snapshot_pb2.Snapshot = snapshot(1, base_url)
            if profile is not None:
                snap.governance_profiles.add(
                    id="gp", tenant_id="", version=1, document_json=json.dumps(profile)
                )
            result = await node.store.apply(envelope(snap, key))
            assert result.accepted, result.reason
        try:
            for _ in range(streams):
                for variant, node in nodes.items():
                    async with grpc.aio.insecure_channel(node.address) as channel:
                        stub = infer_pb2_grpc.InferServiceStub(channel)
                        started = time.perf_counter()
                        got = 0
                        async for event in stub.InferStream(chat("go"), metadata=AUTH, timeout=60):
                            if event.WhichOneof("event") == "delta":
                                got += 1
                        elapsed = time.perf_counter() - started
                    assert got > 0, variant
                    rates[variant].append(chunks / elapsed)
        finally:
            for node in nodes.values():
                await node.stop(0)
    await runner.cleanup()
    off, on = statistics.median(rates["rules off"]), statistics.median(rates["rules on"])
    print(f"{'variant':>10}  {'chunks/s (median)':>18}")
    print(f"{'rules off':>10}  {off:>18.0f}")
    print(f"{'rules on':>10}  {on:>18.0f}")
    print(f"rules on / off: {on / off:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per prompt size")
    parser.add_argument("--streams", type=int, default=20, help="streams per variant (0: none)")
    parser.add_argument("--chunks", type=int, default=2000, help="chunks per stream")
    args = parser.parse_args()
    per_request(args.requests)
    if args.streams:
        print()
        asyncio.run(streaming(args.streams, args.chunks))


if __name__ == "__main__":
    main()
