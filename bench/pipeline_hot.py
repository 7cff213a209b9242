"""The pipeline's own CPU per unary chat, in one process, without sockets: a steady figure.

The node's benches (``http_cpu.py``, ``infer_load.py``) measure whole processes exchanging
requests over loopback, and move by 20-40 % between minutes on this machine: a change of a
few microseconds a request cannot be seen in them. This runs ``Pipeline.answer`` itself in
a loop, as the HTTP door calls it for the peer benchmark's request (``bench/peers``' snapshot:
an API key, policy routing, evidence written and fsynced by its thread, request metrics on),
and times it: the same figure within ~2 % from run to run.

Only the upstream's socket is left out: each provider adapter's ``post_json`` (the HTTP
exchange) is replaced by the JSON answer an OpenAI-compatible upstream gives, already
parsed, so the adapter still builds its upstream body and parses the answer. Everything
else is the node's own code: the request decoded from its JSON bytes, authenticated,
validated, routed, dispatched, counted and recorded (one evidence record written per
request), and the OpenAI answer encoded. Not a node, and not the node's full cost (its HTTP
server, the two sockets and the loop's wake-ups are what ``http_cpu.py`` adds): the part of
a request that the pipeline's code decides.

    .venv/bin/python bench/pipeline_hot.py                         # 7 rounds of 10,000 requests
    .venv/bin/python bench/pipeline_hot.py --requests 2000 --rounds 3
    .venv/bin/python bench/pipeline_hot.py --cprofile /tmp/hot.prof   # calls per request, by function
    .venv/bin/python bench/pipeline_hot.py --gap-ms 5 --requests 500  # a CPU gone cold between requests

Compare two checkouts by running each one's copy (or this file with ``PYTHONPATH`` at the
other checkout), alternated: ``min`` is the figure to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import signalbox_pin  # type: ignore[import-not-found]
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from prometheus_client import CollectorRegistry

from dataplane.config.model import Scope
from dataplane.edge import openai as edge
from dataplane.edge import openai_answers as answers
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.records import read_records
from dataplane.pipeline import Call, Operation, Pipeline
from dataplane.pipeline.metrics import RequestMetrics
from dataplane.routing.dispatch import Dispatcher
from dataplane.snapshot.envelope import key_id_for
from dataplane.snapshot.store import SnapshotStore
from dataplane.upstream import UpstreamClient

REQUEST = orjson.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in one short sentence."},
        ],
        "max_tokens": 64,
        "temperature": 0,
    }
)
"""The peer benchmark's request (``../shared/bench-peers/load/request.json``)."""

ANSWER: dict[str, Any] = {
    "id": "chatcmpl-bench0000000000000000000000001",
    "object": "chat.completion",
    "created": 1732350000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! I am a fixed response from the benchmark mock upstream. How can I help you today?",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 24,
        "completion_tokens": 21,
        "total_tokens": 45,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
}
"""What the peer benchmark's mock upstream answers (``mock/response.json``), parsed."""


async def _answered(url: str, body: Any, *, timeout: float, params: Any = None) -> Any:
    return ANSWER


async def measure(args: argparse.Namespace, work: Path) -> tuple[list[float], list[float]]:
    signalbox_pin.build(work / "pin", "http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1")
    trust = load_pem_public_key((work / "pin" / "trust-key.pem").read_bytes())
    assert isinstance(trust, Ed25519PublicKey)
    client = UpstreamClient()
    store = SnapshotStore(
        trusted={key_id_for(trust): trust},
        scope=Scope(),
        data_dir=work / "node",
        client=client,
    )
    await store.load_pinned(work / "pin" / "pin.bin")
    for adapter in store.require().adapters.values():
        adapter.post_json = _answered  # type: ignore[attr-defined]
    key = (work / "pin" / "api-key").read_text()
    digest = hashlib.sha256(REQUEST).hexdigest()

    def decode() -> Any:
        return edge.decode_chat(edge.loads(REQUEST, bounds=edge.chat_counts), {})

    async with EvidenceLog(log_path(work / "evidence", "hot"), "hot") as evidence:
        pipeline = Pipeline(store, Dispatcher(), evidence, metrics=RequestMetrics(CollectorRegistry()))

        gap = args.gap_ms / 1000

        async def run(n: int, cpu: list[float] | None = None) -> None:
            for _ in range(n):
                if gap:
                    await asyncio.sleep(gap)  # the loop idles, as a node's does between sparse requests
                started = time.thread_time()
                served = await pipeline.answer(
                    Call(Operation.CHAT, decode, api_key=key, request_sha256=digest)
                )
                answers.completion(
                    f"chatcmpl-{served.evidence_id}", served.candidate.model.alias, served.result
                )
                if cpu is not None:
                    cpu.append(time.thread_time() - started)

        await run(args.warmup)
        profiler = cProfile.Profile() if args.cprofile else None
        rounds = []
        cpu: list[float] = []
        for _ in range(args.rounds):
            if profiler is not None:
                profiler.enable()
            started = time.perf_counter()
            await run(args.requests, cpu)
            rounds.append((time.perf_counter() - started) / args.requests * 1e6)
            if profiler is not None:
                profiler.disable()
        if profiler is not None:
            profiler.dump_stats(args.cprofile)
    await client.aclose()
    written = sum(1 for _ in read_records(log_path(work / "evidence", "hot")))
    expected = args.warmup + args.rounds * args.requests
    if written != expected:  # the figure is the cost of that work only if the work was done
        raise SystemExit(f"pipeline_hot: {written} evidence records for {expected} requests")
    return rounds, cpu


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--cprofile", type=Path, help="profile the rounds, stats written here")
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="idle this long before each request (a node serving sparse requests); also prints "
        "the thread's CPU per request",
    )
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1 or args.warmup < 0 or not 0 <= args.gap_ms <= 10_000:
        parser.error("--requests and --rounds must be at least 1, --warmup at least 0, --gap-ms 0 to 10000")
    with tempfile.TemporaryDirectory(prefix="pipeline-hot-") as tmp:
        rounds, cpu = asyncio.run(measure(args, Path(tmp)))
    if not args.gap_ms:
        print(f"pipeline us/request over {args.rounds} rounds of {args.requests}: ", end="")
        print(f"min {min(rounds):.1f}  median {statistics.median(rounds):.1f}  max {max(rounds):.1f}")
    else:  # the wall time is mostly the gaps: the CPU the requests took is the figure
        cpu.sort()
        print(
            f"thread CPU us/request after {args.gap_ms:g} ms idle: "
            f"median {cpu[len(cpu) // 2] * 1e6:.1f}  p90 {cpu[int(len(cpu) * 0.9)] * 1e6:.1f}"
        )
    if args.cprofile:
        print(f"cProfile stats of the rounds: {args.cprofile} (inflated per call; compare calls, not time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
