"""New JSON schemas are checked in one checker process per node worker, one at a time. Without
bounds one caller held it for everyone: a schema of 150,000 empty ``anyOf`` branches (within
the size limits) took 37 s to check, and every other caller with a new schema waited behind
it, past its own deadline, with abandoned checks still queued. These tests hold the bounds:
too large a schema is refused unchecked, the checker takes a bounded number of checks (and
of one tenant's), a wait ends at the request's deadline naming the schema, a check no one
waits for any more is dropped, and requests with the same new schemas share one check."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane import validation
from dataplane.chat import ChatRequest, Message, Role, TextPart, ToolDefinition
from dataplane.errors import CheckUnavailable, DeadlineExceeded, InvalidRequest
from dataplane.validation import MAX_SCHEMA_OBJECTS, UNKNOWN, SchemaVerdicts, check_schemas
from tests.dataplane.conftest import API_KEY, NodeFactory, envelope, snapshot
from tests.helpers import eventually

HEADERS = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}


def _request(schema: dict[str, Any]) -> ChatRequest:
    return ChatRequest((Message(Role.USER, (TextPart("hi"),)),), (ToolDefinition("f", "", schema),))


def _slow(properties: int = 3_000) -> dict[str, Any]:
    """A new valid schema that takes the checker most of a second (~0.25 ms a subschema)."""
    return {
        "type": "object",
        "title": str(uuid.uuid4()),
        "properties": {f"p{i}": {"type": "string"} for i in range(properties)},
    }


def _small() -> dict[str, Any]:
    return {"type": "object", "title": str(uuid.uuid4())}


@pytest.fixture(autouse=True)
async def checker_idle() -> AsyncIterator[None]:
    """Each test starts, and leaves, with no check pending (the checker is the process's)."""
    await eventually(lambda: not validation._jobs, message="no schema check pending")
    yield
    await eventually(lambda: not validation._jobs, timeout=30, message="every schema check done")


async def test_a_schema_of_more_subschemas_than_the_node_checks_is_refused_unchecked() -> None:
    too_many = {"anyOf": [{} for _ in range(MAX_SCHEMA_OBJECTS)]}  # and the root: one more
    verdicts = SchemaVerdicts()
    with pytest.raises(InvalidRequest) as refused:
        await check_schemas(_request(too_many), verdicts)
    assert refused.value.field == "tools[0].parameters_json_schema"
    assert f"more than {MAX_SCHEMA_OBJECTS} subschemas" in str(refused.value)
    assert len(verdicts) == 0  # never sent to the checker
    # Lists nest objects too; values that are not objects are not counted.
    nested = {"type": "string", "enum": ["x"] * 100_000, "allOf": [[{}] * 10] * (MAX_SCHEMA_OBJECTS // 10)}
    with pytest.raises(InvalidRequest, match="subschemas"):
        await check_schemas(_request(nested), verdicts)
    await check_schemas(_request({"type": "string", "enum": [str(i) for i in range(100_000)]}), verdicts)


async def test_requests_with_the_same_new_schema_share_one_check() -> None:
    request = _request(_slow(1_000))
    verdicts = SchemaVerdicts()
    waits = [asyncio.ensure_future(check_schemas(request, verdicts, tenant="a")) for _ in range(5)]
    await eventually(lambda: len(validation._jobs) == 1, message="one check pending")
    assert not any(w.done() for w in waits)
    await asyncio.gather(*waits)
    assert len(verdicts) == 1


async def test_a_tenant_gets_two_checks_at_once_and_others_still_get_theirs() -> None:
    verdicts = SchemaVerdicts()
    mine = [
        asyncio.ensure_future(check_schemas(_request(_slow()), verdicts, tenant="greedy")) for _ in range(2)
    ]
    await eventually(lambda: len(validation._jobs) == 2, message="two checks pending")
    with pytest.raises(CheckUnavailable, match="tenant greedy has 2 new schemas being checked already"):
        await check_schemas(_request(_small()), verdicts, tenant="greedy")
    await check_schemas(_request(_small()), verdicts, tenant="other")  # queued behind them, served
    await asyncio.gather(*mine)


async def test_a_checker_with_its_hands_full_refuses_more(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "MAX_PENDING_CHECKS", 2)
    verdicts = SchemaVerdicts()
    busy = [
        asyncio.ensure_future(check_schemas(_request(_slow()), verdicts, tenant=tenant))
        for tenant in ("a", "b")
    ]
    await eventually(lambda: len(validation._jobs) == 2, message="two checks pending")
    with pytest.raises(CheckUnavailable, match="has 2 new schemas to check already; retry"):
        await check_schemas(_request(_small()), verdicts, tenant="c")
    await asyncio.gather(*busy)
    await check_schemas(_request(_small()), verdicts, tenant="c")  # room again


async def test_a_wait_ends_at_the_deadline_naming_the_schema_and_the_abandoned_check_is_dropped() -> None:
    verdicts = SchemaVerdicts()
    # One check runs and two more are handed to its process ahead of time (ProcessPoolExecutor
    # fills a queue of its workers plus one beyond the one running): the fourth waits in the
    # executor's own queue, where it can still be dropped.
    ahead = [
        asyncio.ensure_future(check_schemas(_request(_slow()), verdicts, tenant=tenant)) for tenant in "aac"
    ]
    await eventually(lambda: len(validation._jobs) == 3, message="three checks pending")
    late = _request(_small())
    with pytest.raises(DeadlineExceeded) as refused:
        await check_schemas(late, verdicts, tenant="b", timeout=0.2)
    message = str(refused.value)
    assert message.startswith("tools[0].parameters_json_schema: not checked as a JSON Schema within")
    await asyncio.gather(*ahead)
    digest, _ = validation._digest(late.tools[0].parameters)
    assert verdicts.get(digest) is UNKNOWN  # dropped before it ran: no one waited for it


async def test_a_caller_that_leaves_drops_its_check_but_not_one_another_waits_for() -> None:
    verdicts = SchemaVerdicts()
    ahead = [
        asyncio.ensure_future(check_schemas(_request(_slow()), verdicts, tenant=tenant)) for tenant in "aad"
    ]
    await eventually(lambda: len(validation._jobs) == 3, message="three checks pending")
    shared, alone = _request(_small()), _request(_small())
    leaving = [asyncio.ensure_future(check_schemas(r, verdicts, tenant="b")) for r in (shared, alone)]
    staying = asyncio.ensure_future(check_schemas(shared, verdicts, tenant="c"))
    await eventually(lambda: len(validation._jobs) == 5, message="both queued")
    for caller in leaving:
        caller.cancel()
    await asyncio.gather(*ahead, staying)
    assert verdicts.get(validation._digest(shared.tools[0].parameters)[0]) is None  # checked: valid
    assert verdicts.get(validation._digest(alone.tools[0].parameters)[0]) is UNKNOWN  # dropped


# ---- through the HTTP door


@pytest.fixture
async def http(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> AsyncIterator[aiohttp.ClientSession]:
    node = await start_node(http_listen="127.0.0.1:0")
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted
    async with aiohttp.ClientSession(f"http://{node.http_address}") as session:
        yield session


def _chat(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "sim-fast",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
    }


async def test_the_door_refuses_too_large_a_schema_400_naming_it(http: aiohttp.ClientSession) -> None:
    body = _chat({"anyOf": [{} for _ in range(150_000)]})
    async with http.post("/v1/chat/completions", json=body, headers=HEADERS) as response:
        assert response.status == 400, await response.text()
        error = (await response.json())["error"]
    assert error["param"] == "tools[0].function.parameters"
    assert "subschemas" in error["message"]


async def test_the_check_keeps_the_callers_deadline(http: aiohttp.ClientSession) -> None:
    headers = {**HEADERS, "x-signalbox-timeout-ms": "400"}
    async with http.post("/v1/chat/completions", json=_chat(_slow(4_500)), headers=headers) as response:
        assert response.status == 504, await response.text()
        error = (await response.json())["error"]
    assert "not checked as a JSON Schema within the request's deadline" in error["message"]


def test_a_check_its_loop_left_behind_is_forgotten_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    # A node stopping (its event loop closed) while a check runs: the check ends later, in
    # the checker's thread, with no loop to tell. It must still leave the list of pending
    # checks (or it would count against the bounds of the next loop, a restarted node's),
    # and quietly: no "exception calling callback" from a closed loop.
    loop = asyncio.new_event_loop()
    try:
        waiting = loop.create_task(check_schemas(_request(_slow(2_000)), SchemaVerdicts(), tenant="gone"))
        loop.run_until_complete(eventually(lambda: len(validation._jobs) == 1, message="the check pending"))
        (job,) = validation._jobs.values()
        loop.run_until_complete(eventually(job.future.running, message="the check handed to the checker"))
        waiting.cancel()
        loop.run_until_complete(asyncio.gather(waiting, return_exceptions=True))
        assert len(validation._jobs) == 1  # running: it cannot be dropped
    finally:
        loop.close()
    asyncio.run(eventually(lambda: not validation._jobs, timeout=30, message="the check forgotten"))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
