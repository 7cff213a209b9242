"""The simulated upstream over real HTTP: wire format, determinism, control and counters."""

from __future__ import annotations

import base64
import json
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from signalbox.shell.simulator import Behaviour, Simulator, embedding_for
from tests.helpers import wait_until

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
        },
    },
}


@pytest.fixture
async def client(simulator: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=simulator.base_url, timeout=10) as c:
        yield c


def chat(text: str, model: str = "sim-fast", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def sse_events(response: httpx.Response) -> list[Any]:
    """The data of each SSE event, JSON-decoded except the final ``[DONE]``."""
    raw = response.text
    assert raw.endswith("data: [DONE]\n\n")
    events: list[Any] = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_chat_completion_has_the_openai_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat("hello there"))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "sim-fast"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {
        "role": "assistant",
        "content": "Simulated answer to: hello there",
        "refusal": None,
    }
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] == 5  # "Simulated", " answer", " to:", " hello", " there"
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_answers_are_deterministic_and_token_counts_grow_with_the_prompt(
    client: httpx.AsyncClient,
) -> None:
    short = (await client.post("/v1/chat/completions", json=chat("hi"))).json()
    again = (await client.post("/v1/chat/completions", json=chat("hi"))).json()
    long = (await client.post("/v1/chat/completions", json=chat("hi " * 400))).json()

    assert short["choices"] == again["choices"]
    assert short["usage"] == again["usage"]
    assert long["usage"]["prompt_tokens"] > short["usage"]["prompt_tokens"] + 250


async def test_stream_without_usage(client: httpx.AsyncClient) -> None:
    plain = (await client.post("/v1/chat/completions", json=chat("stream me"))).json()
    response = await client.post("/v1/chat/completions", json=chat("stream me", stream=True))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = await sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("usage" not in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


async def test_stream_with_include_usage_ends_with_a_usage_chunk(client: httpx.AsyncClient) -> None:
    plain = (await client.post("/v1/chat/completions", json=chat("count me"))).json()
    response = await client.post(
        "/v1/chat/completions",
        json=chat("count me", stream=True, stream_options={"include_usage": True}),
    )

    chunks = (await sse_events(response))[:-1]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == plain["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_required_tool_choice_calls_a_tool_with_schema_valid_arguments(
    client: httpx.AsyncClient,
) -> None:
    body = chat("Weather in Paris?", model="sim-smart", tools=[WEATHER_TOOL], tool_choice="required")
    result = (await client.post("/v1/chat/completions", json=body)).json()

    [choice] = result["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Weather in Paris?", "unit": "celsius"}


@pytest.mark.parametrize(
    ("prompt", "tool_choice", "calls"),
    [
        ("please use get_weather for Oslo", None, True),  # the prompt names the tool
        ("call a tool for me", "auto", True),  # the prompt asks for a tool
        ("just chat", "auto", False),
        ("use get_weather", "none", False),  # "none" always wins
        ("just chat", {"type": "function", "function": {"name": "get_weather"}}, True),
    ],
)
async def test_when_tools_are_called(
    client: httpx.AsyncClient, prompt: str, tool_choice: Any, calls: bool
) -> None:
    body = chat(prompt, tools=[WEATHER_TOOL])
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    result = (await client.post("/v1/chat/completions", json=body)).json()

    assert ("tool_calls" in result["choices"][0]["message"]) is calls
    assert result["choices"][0]["finish_reason"] == ("tool_calls" if calls else "stop")


async def test_unknown_named_tool_is_a_bad_request(client: httpx.AsyncClient) -> None:
    body = chat("x", tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "nope"}})
    response = await client.post("/v1/chat/completions", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tool_choice"


async def test_streamed_tool_call_reassembles_to_the_unary_one(client: httpx.AsyncClient) -> None:
    body = chat("Weather?", tools=[WEATHER_TOOL], tool_choice="required")
    unary = (await client.post("/v1/chat/completions", json=body)).json()
    response = await client.post("/v1/chat/completions", json={**body, "stream": True})

    chunks = (await sse_events(response))[:-1]
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["id"] == unary["choices"][0]["message"]["tool_calls"][0]["id"]
    assert deltas[0]["function"]["name"] == "get_weather"
    assert all(d["index"] == 0 for d in deltas)
    arguments = "".join(d["function"]["arguments"] for d in deltas)
    assert arguments == unary["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_tool_result_gets_a_text_answer(client: httpx.AsyncClient) -> None:
    body = {
        "model": "sim-smart",
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "messages": [
            {"role": "user", "content": "use get_weather"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
        ],
    }
    result = (await client.post("/v1/chat/completions", json=body)).json()

    assert result["choices"][0]["message"]["content"] == "The tool returned: sunny, 21C"
    assert result["choices"][0]["finish_reason"] == "stop"


async def test_max_tokens_truncates_with_finish_reason_length(client: httpx.AsyncClient) -> None:
    result = (
        await client.post("/v1/chat/completions", json=chat("one two three four five", max_tokens=2))
    ).json()

    assert result["choices"][0]["message"]["content"] == "Simulated answer"
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "sim-fast", "messages": []}, "messages"),
        (
            {"model": "sim-fast", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
    ],
)
async def test_bad_requests_name_the_parameter(
    client: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    response = await client.post("/v1/chat/completions", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["param"] == param


async def test_invalid_json_is_a_bad_request(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", content=b"{not json")

    assert response.status_code == 400


async def test_embeddings_float_and_base64_carry_the_same_vector(client: httpx.AsyncClient) -> None:
    plain = (
        await client.post("/v1/embeddings", json={"model": "sim-embed", "input": ["alpha", "beta"]})
    ).json()
    b64 = (
        await client.post(
            "/v1/embeddings",
            json={"model": "sim-embed", "input": ["alpha", "beta"], "encoding_format": "base64"},
        )
    ).json()

    assert plain["object"] == "list"
    assert [d["index"] for d in plain["data"]] == [0, 1]
    assert plain["data"][0]["embedding"] == embedding_for("alpha")
    assert plain["data"][0]["embedding"] != plain["data"][1]["embedding"]
    decoded = base64.b64decode(b64["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(decoded) // 4}f", decoded)) == plain["data"][0]["embedding"]
    assert plain["usage"]["prompt_tokens"] == plain["usage"]["total_tokens"] > 0
    assert sum(v * v for v in plain["data"][0]["embedding"]) == pytest.approx(1.0, rel=1e-5)


async def test_embeddings_respect_dimensions(client: httpx.AsyncClient) -> None:
    body = {"model": "sim-embed", "input": "x", "dimensions": 64}
    result = (await client.post("/v1/embeddings", json=body)).json()

    assert len(result["data"][0]["embedding"]) == 64


async def test_models_lists_defaults_and_models_seen(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=chat("x", model="custom-model"))
    result = (await client.get("/v1/models")).json()

    ids = [m["id"] for m in result["data"]]
    assert result["object"] == "list"
    assert {"sim-fast", "sim-smart", "custom-model"} <= set(ids)
    assert all(m["object"] == "model" for m in result["data"])


async def test_runtime_failure_behaviour_with_retry_after(client: httpx.AsyncClient) -> None:
    set_response = await client.post(
        "/_sim/behaviour", json={"model": "sim-fast", "fail_status": 503, "retry_after": 2}
    )
    assert set_response.status_code == 200

    failed = await client.post("/v1/chat/completions", json=chat("x"))
    other = await client.post("/v1/chat/completions", json=chat("x", model="sim-smart"))

    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "2"
    assert failed.json()["error"]["type"] == "server_error"
    assert other.status_code == 200  # behaviour is per model
    stats = (await client.get("/_sim/stats")).json()
    assert stats["models"]["sim-fast"]["failed"] == 1
    assert stats["models"]["sim-fast"]["chat"] == 1
    assert stats["models"]["sim-smart"]["failed"] == 0
    assert stats["total"] == 2


async def test_fail_rate_is_deterministic(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/behaviour", json={"model": "sim-fast", "fail_status": 500, "fail_rate": 0.5})

    statuses = [(await client.post("/v1/chat/completions", json=chat("x"))).status_code for _ in range(6)]

    assert statuses == [200, 500, 200, 500, 200, 500]


async def test_fail_times_then_recovers(client: httpx.AsyncClient) -> None:
    await client.post(
        "/_sim/behaviour",
        json={"model": "*", "fail_status": 429, "fail_times": 2, "error_body": {"error": "slow down"}},
    )

    responses = [await client.post("/v1/chat/completions", json=chat("x")) for _ in range(3)]

    assert [r.status_code for r in responses] == [429, 429, 200]
    assert responses[0].json() == {"error": "slow down"}


async def test_latency_delays_the_response(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/behaviour", json={"model": "sim-fast", "latency_ms": 150})

    started = time.monotonic()
    response = await client.post("/v1/chat/completions", json=chat("x"))

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.15


async def test_failure_applies_to_streams_before_any_byte(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/behaviour", json={"model": "sim-fast", "fail_status": 500})

    response = await client.post("/v1/chat/completions", json=chat("x", stream=True))

    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")


async def test_bad_behaviour_is_rejected(client: httpx.AsyncClient) -> None:
    unknown = await client.post("/_sim/behaviour", json={"model": "m", "fail_stats": 500})
    status = await client.post("/_sim/behaviour", json={"model": "m", "fail_status": 200})

    assert unknown.status_code == 400
    assert "fail_stats" in unknown.json()["error"]
    assert status.status_code == 400


async def test_stats_record_kinds_and_last_request_then_reset(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=chat("a"))
    await client.post("/v1/chat/completions", json=chat("b", stream=True))
    await client.post("/v1/embeddings", json={"model": "sim-fast", "input": "c"})

    stats = (await client.get("/_sim/stats")).json()["models"]["sim-fast"]
    assert (stats["chat"], stats["stream"], stats["embeddings"], stats["total"]) == (1, 1, 1, 3)
    assert stats["last_request"] == {"model": "sim-fast", "input": "c"}

    await client.post("/_sim/reset")
    assert (await client.get("/_sim/stats")).json() == {"total": 0, "models": {}}


async def test_reset_restores_start_up_behaviour() -> None:
    async with (
        Simulator(behaviours={"m": Behaviour(fail_status=500)}) as sim,
        httpx.AsyncClient(base_url=sim.base_url) as client,
    ):
        await client.post("/_sim/behaviour", json={"model": "m"})
        assert (await client.post("/v1/chat/completions", json=chat("x", model="m"))).status_code == 200

        await client.post("/_sim/reset")

        assert (await client.post("/v1/chat/completions", json=chat("x", model="m"))).status_code == 500
        assert sim.stats("m").failed == 1


async def test_api_key_is_enforced_when_configured() -> None:
    async with Simulator(api_key="sk-test") as sim, httpx.AsyncClient(base_url=sim.base_url) as client:
        denied = await client.post("/v1/chat/completions", json=chat("x"))
        allowed = await client.post(
            "/v1/chat/completions", json=chat("x"), headers={"Authorization": "Bearer sk-test"}
        )

        models = await client.get("/v1/models")

    assert models.status_code == 401
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "invalid_api_key"
    assert allowed.status_code == 200


async def test_chunk_delay_streams_chunks_separately(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/behaviour", json={"model": "sim-fast", "chunk_delay_ms": 30})

    async with client.stream("POST", "/v1/chat/completions", json=chat("a b c", stream=True)) as response:
        arrivals = [time.monotonic() async for _ in response.aiter_bytes()]

    assert len(arrivals) > 3
    assert arrivals[-1] - arrivals[0] >= 0.1


def test_serve_command_serves_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "signalbox.shell.simulator", "serve", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert base_url.startswith("http://127.0.0.1:")
        response = httpx.post(f"{base_url}/v1/chat/completions", json=chat("over the wire"))
        assert response.json()["choices"][0]["message"]["content"] == "Simulated answer to: over the wire"

        process.send_signal(signal.SIGTERM)
        wait_until(lambda: process.poll() is not None, timeout=10, message="simulator exit")
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def test_wildcard_behaviour_reaches_models_already_seen_but_not_those_with_their_own(
    simulator: Simulator, client: httpx.AsyncClient
) -> None:
    await client.post("/v1/chat/completions", json=chat("x", model="seen"))
    simulator.set_behaviour("own", Behaviour())

    simulator.set_behaviour("*", Behaviour(fail_status=502))

    assert (await client.post("/v1/chat/completions", json=chat("x", model="seen"))).status_code == 502
    assert (await client.post("/v1/chat/completions", json=chat("x", model="new"))).status_code == 502
    assert (await client.post("/v1/chat/completions", json=chat("x", model="own"))).status_code == 200
    assert simulator.stats("seen").failed == 1


async def test_drop_after_chunks_breaks_the_stream_midway(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/behaviour", json={"model": "sim-fast", "drop_after_chunks": 2})

    received: list[bytes] = []

    async def read_stream() -> None:
        async with client.stream("POST", "/v1/chat/completions", json=chat("a b c d", stream=True)) as r:
            async for data in r.aiter_bytes():
                received.append(data)

    with pytest.raises(httpx.RemoteProtocolError):
        await read_stream()

    assert b"".join(received).count(b"data: ") == 2
    assert b"[DONE]" not in b"".join(received)
    assert (await client.get("/_sim/stats")).json()["models"]["sim-fast"]["failed"] == 1
    # Non-streaming calls are unaffected.
    assert (await client.post("/v1/chat/completions", json=chat("x"))).status_code == 200
