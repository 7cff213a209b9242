"""The least a chat request through the node can cost in this Python, for ``http_cpu.py --lean``.

Not a node: a measuring stick between ``floor-minproxy`` (no work at all) and the node's HTTP
door (all of it). It does only the work every request must have done, with the node's own
HTTP server, upstream client and evidence log, and none of the pipeline's generality:

- the bearer key checked as the node checks it (HMAC-SHA256 under a secret, one dict lookup);
- the body parsed (orjson), its messages checked to be role/content strings;
- the route: one dict lookup from (tenant, model) to the upstream deployment;
- the upstream call through ``dataplane.upstream.UpstreamClient``, its JSON answer parsed;
- one evidence record with the fields a served record has (``EvidenceLog.append``: canonical
  JSON, SHA-256, the chain link, one ``write()``, the Merkle leaf; fsynced by the log's thread
  as on a node), and the request's and answer's SHA-256;
- the OpenAI answer encoded (orjson) with ``x-request-id`` and ``x-evidence-id``.

No policy, limits, governance, metrics, tracing, fallbacks or streaming. The gap between this
and the node's door is what the pipeline's layers cost; the gap between this and
floor-minproxy is what the work itself costs on this machine.

``--bare`` does none of that work: each request's body goes to the upstream as it came and the
upstream's answer back as it came, through the same HTTP server and upstream client. The gap
between it and floor-minproxy is what those two components cost over the least a proxy can
do; the gap between it and the lean door is what the mandatory work costs.

    python bench/lean_door.py --port P --upstream http://127.0.0.1:N/v1 --key KEY --data-dir D
    python bench/lean_door.py ... --slow-upstream http://127.0.0.1:M/v1   # gpt-4o-mini-slow there
    python bench/lean_door.py ... --bare
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import secrets
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.http.messages import Request, Response
from dataplane.http.server import HttpServer
from dataplane.upstream.client import UpstreamClient

_JSON = (b"content-type", b"application/json")
_UPSTREAM_HEADERS = b"Content-Type: application/json\r\nAuthorization: Bearer upstream-key\r\n"


def _error(status: int, message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}})


async def serve(args: argparse.Namespace) -> None:
    secret = secrets.token_bytes(32)
    keys = {hmac.digest(secret, args.key.encode(), "sha256"): ("tenant-bench", "key-bench")}
    routes = {("tenant-bench", "gpt-4o-mini"): ("mock", "gpt-4o-mini", f"{args.upstream}/chat/completions")}
    if args.slow_upstream:  # as the peer benchmark's snapshot routes its delayed model
        slow = f"{args.slow_upstream}/chat/completions"
        routes[("tenant-bench", "gpt-4o-mini-slow")] = ("mock-slow", "gpt-4o-mini", slow)
    bare_url = f"{args.upstream}/chat/completions"
    client = UpstreamClient()
    async with EvidenceLog(log_path(Path(args.data_dir), "lean"), "lean") as log:

        async def relay(request: Request, response: Response) -> None:
            answer = await client.request(
                "POST", bare_url, headers=_UPSTREAM_HEADERS, body=request.body, timeout=30
            )
            data, _ = await answer.read(1 << 20)
            answer.close()
            await response.send(answer.status, (_JSON,), data)

        async def handle(request: Request, response: Response) -> None:
            started = time.perf_counter()
            auth = request.headers.get("authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            caller = keys.get(hmac.digest(secret, token.encode(), "sha256"))
            if caller is None:
                await response.send(401, (_JSON,), _error(401, "invalid API key"))
                return
            try:
                body = orjson.loads(request.body)
            except orjson.JSONDecodeError:
                await response.send(400, (_JSON,), _error(400, "body: not JSON"))
                return
            messages = body.get("messages") if type(body) is dict else None
            if type(messages) is not list or not all(
                type(m) is dict and type(m.get("role")) is str and type(m.get("content")) is str
                for m in messages
            ):
                await response.send(400, (_JSON,), _error(400, "messages: role and content strings"))
                return
            route = routes.get((caller[0], body.get("model")))
            if route is None:
                await response.send(404, (_JSON,), _error(404, "model: not found"))
                return
            provider, upstream_model, url = route
            correlation_id = request.headers.get("x-request-id") or secrets.token_hex(16)
            upstream_body = {"model": upstream_model, "messages": messages}
            if "max_tokens" in body:
                upstream_body["max_tokens"] = body["max_tokens"]
            if "temperature" in body:
                upstream_body["temperature"] = body["temperature"]
            dispatched = time.perf_counter()
            answer = await client.request(
                "POST", url, headers=_UPSTREAM_HEADERS, body=orjson.dumps(upstream_body), timeout=30
            )
            data, _ = await answer.read(1 << 20)
            answer.close()
            parsed = orjson.loads(data)
            choice = parsed["choices"][0]
            usage = parsed.get("usage") or {}
            content = choice["message"]["content"]
            finished = time.perf_counter()
            record_id = log.append(
                {
                    "ts": time.time(),
                    "kind": "infer",
                    "correlation_id": correlation_id,
                    "tenant_id": caller[0],
                    "api_key_id": caller[1],
                    "snapshot": {"version": 1, "sha256": "ab" * 32},
                    "policy": {"id": "default", "version": 1},
                    "routing": {
                        "rule": "explicit",
                        "strategy": "explicit",
                        "candidates": [body.get("model")],
                        "served_by": {
                            "model": body.get("model"),
                            "provider": provider,
                            "deployment": upstream_model,
                        },
                        "attempts": [
                            {
                                "model": body.get("model"),
                                "provider": provider,
                                "outcome": "ok",
                                "duration_ms": (finished - dispatched) * 1000,
                            }
                        ],
                    },
                    "timings": {
                        "total_ms": (finished - started) * 1000,
                        "dispatch_ms": (finished - dispatched) * 1000,
                    },
                    "usage": {
                        "input_tokens": usage.get("prompt_tokens", 0),
                        "output_tokens": usage.get("completion_tokens", 0),
                    },
                    "cost": {"currency": "USD", "total_nanos": 0},
                    "outcome": {"code": "OK", "message": "", "error": None},
                    "request_sha256": hashlib.sha256(request.body).hexdigest(),
                    "response_sha256": hashlib.sha256(content.encode()).hexdigest(),
                }
            )
            out = orjson.dumps(
                {
                    "id": f"chatcmpl-{record_id}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": choice.get("finish_reason", "stop"),
                        }
                    ],
                    "usage": usage,
                }
            )
            headers = (
                _JSON,
                (b"x-request-id", correlation_id.encode()),
                (b"x-evidence-id", record_id.encode()),
            )
            await response.send(200, headers, out)

        server = HttpServer(relay if args.bare else handle, _error)
        await server.start("127.0.0.1", args.port)
        try:
            await asyncio.Event().wait()
        finally:
            await server.close(1.0)
            await client.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the mock's base URL, .../v1")
    parser.add_argument("--key", required=True, help="the bearer key callers send")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--slow-upstream", help="the delayed mock's base URL, for gpt-4o-mini-slow")
    parser.add_argument(
        "--bare", action="store_true", help="no work: relay each body and answer as they come (--upstream)"
    )
    args = parser.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
