"""``bench/lean_door.py``, the measuring stick of ``http_cpu.py --lean``: it must do the work
it claims (the key checked, the upstream called, one evidence record per answer, the OpenAI
shape), or the figure it gives is not the cost of that work."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records, record_hash
from signalbox.ports import free_port
from signalbox.shell.simulator import Simulator
from tests.helpers import eventually

LEAN = Path(__file__).resolve().parents[2] / "bench" / "lean_door.py"
KEY = "sbx_lean-test-key"


@asynccontextmanager
async def running_lean(upstream: str, data_dir: Path, *extra: str) -> AsyncIterator[str]:
    """``lean_door.py`` started with ``extra`` arguments; its chat URL once it listens."""
    port = free_port()
    errors = (data_dir.parent / "stderr").open("wb")  # kept for whoever debugs a start that failed
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(LEAN), "--port", str(port), "--upstream", upstream,
        "--key", KEY, "--data-dir", str(data_dir), *extra,
        stdout=subprocess.DEVNULL, stderr=errors,
    )  # fmt: skip

    async def accepting() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    try:
        await eventually(accepting, timeout=30, message="the lean door listening")
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        process.terminate()
        await process.wait()
        errors.close()


@pytest.fixture
async def lean(simulator: Simulator, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    async with running_lean(f"{simulator.base_url}/v1", tmp_path / "data") as url:
        yield url, tmp_path / "data"


async def test_it_answers_with_one_evidence_record_and_refuses_a_bad_key(lean: tuple[str, Path]) -> None:
    url, data_dir = lean
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers={"authorization": f"Bearer {KEY}"}) as answer:
            assert answer.status == 200, await answer.text()
            served = await answer.json()
            evidence_id = answer.headers["x-evidence-id"]
            correlation_id = answer.headers["x-request-id"]
        async with session.post(url, json=body, headers={"authorization": "Bearer sbx_wrong"}) as refused:
            assert refused.status == 401
            assert "invalid API key" in (await refused.json())["error"]["message"]

    assert served["object"] == "chat.completion"
    assert served["choices"][0]["message"]["role"] == "assistant"
    assert "Say hello." in served["choices"][0]["message"]["content"]  # the simulator's echo
    assert served["usage"]["total_tokens"] > 0

    records = await eventually(
        lambda: list(read_records(log_path(data_dir, "lean"))) or None, message="the record written"
    )
    assert [(r["record_id"], r["correlation_id"], r["outcome"]["code"]) for r in records] == [
        (evidence_id, correlation_id, "OK")
    ]
    assert records[0]["hash"] == record_hash(records[0])  # a real chain record, not a stand-in


async def test_the_delayed_model_goes_to_the_slow_upstream(simulator: Simulator, tmp_path: Path) -> None:
    # As the peer benchmark's snapshot routes it (bench/peers/signalbox-lean.sh).
    async with (
        Simulator() as slow,
        running_lean(
            f"{simulator.base_url}/v1", tmp_path / "data", "--slow-upstream", f"{slow.base_url}/v1"
        ) as url,
        aiohttp.ClientSession() as session,
    ):
        for model in ("gpt-4o-mini-slow", "gpt-4o-mini-slow", "gpt-4o-mini"):
            body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}]}
            async with session.post(url, json=body, headers={"authorization": f"Bearer {KEY}"}) as answer:
                assert answer.status == 200, await answer.text()
                assert (await answer.json())["model"] == model
        assert (simulator.stats_json()["total"], slow.stats_json()["total"]) == (1, 2)


async def test_bare_relays_body_and_answer_as_they_come_and_does_no_work(
    simulator: Simulator, tmp_path: Path
) -> None:
    # No key checked, no record written: the server and the client alone (http_cpu.py --bare).
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
    async with (
        running_lean(f"{simulator.base_url}/v1", tmp_path / "data", "--bare") as url,
        aiohttp.ClientSession() as session,
    ):
        async with session.post(url, json=body) as answer:
            assert answer.status == 200, await answer.text()
            served = await answer.json()
            assert "x-evidence-id" not in answer.headers
        async with session.post(url, json={"model": "gpt-4o-mini", "messages": "not a list"}) as refused:
            relayed = (refused.status, await refused.json())

    assert served["object"] == "chat.completion"
    assert "Say hello." in served["choices"][0]["message"]["content"]  # the simulator's own answer
    assert relayed[0] == 400  # the simulator's own refusal, relayed
    assert "messages" in relayed[1]["error"]["message"]
    assert simulator.stats_json()["total"] == 2
    assert list(read_records(log_path(tmp_path / "data", "lean"))) == []
