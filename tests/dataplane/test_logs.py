"""Structured logs: a node's stderr is one JSON object per line, every line with its service,
node and worker, a request's lines with its correlation id and tenant, and no secret."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from signalbox import logs
from tests.dataplane.conftest import API_KEY, pinned_serve_args
from tests.dataplane.test_pin_watch_process import site_pin
from tests.dataplane.test_workers import free_port, workers_up
from tests.helpers import eventually


def _record(message: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("signalbox.test", logging.WARNING, __file__, 1, message, (), info)


def test_a_json_line_carries_the_process_and_the_bound_request() -> None:
    formatter = logs.JsonFormatter({"service": "dataplane", "node": "edge-1", "worker": 2})
    logs.bind_request("cid-1", "t-acme")
    event = json.loads(formatter.format(_record("upstream slow", exc=True)))
    assert {k: event[k] for k in ("level", "logger", "msg", "service", "node", "worker")} == {
        "level": "WARNING",
        "logger": "signalbox.test",
        "msg": "upstream slow",
        "service": "dataplane",
        "node": "edge-1",
        "worker": 2,
    }
    assert (event["correlation_id"], event["tenant"]) == ("cid-1", "t-acme")
    assert event["ts"].endswith("Z")
    assert "ValueError: boom" in event["exc"]
    logs.bind_request("")
    event = json.loads(formatter.format(_record("x" * 20_000)))
    assert "correlation_id" not in event
    assert len(event["msg"]) < logs.MAX_MESSAGE_CHARS + 20


async def test_a_node_logs_json_lines_with_the_requests_correlation_id_and_tenant(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(site_pin(signing_key, 3, simulator.base_url))
    http_port = free_port()
    args = pinned_serve_args(pin, trust_key, tmp_path / "node", "--node-id", "logger-1")
    args += ["--http-listen", f"127.0.0.1:{http_port}", "--log-level", "DEBUG", "--workers", "1"]
    lines: list[str] = []
    async with workers_up(args, 1, lines=lines) as process:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{http_port}/v1/chat/completions",
                json={"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {API_KEY}", "x-request-id": "log-me-1"},
            ) as response,
        ):
            assert response.status == 200, await response.text()

        def logged() -> list[dict[str, Any]]:
            events = [json.loads(line) for line in lines if line.strip()]
            assert any(e.get("correlation_id") == "log-me-1" for e in events)
            return events

        events = await eventually(logged, message="the request's DEBUG line")
        process.terminate()
        await process.wait()
    for event in events:
        assert {"ts", "level", "logger", "msg", "service", "node", "worker"} <= set(event)
        assert (event["service"], event["node"], event["worker"]) == ("dataplane", "logger-1", 0)
    mine = [e for e in events if e.get("correlation_id") == "log-me-1"]
    assert {e["tenant"] for e in mine} == {"t-acme"}
    assert API_KEY not in "\n".join(lines)


@pytest.mark.parametrize("fmt", ["yaml", ""])
def test_an_unknown_log_format_is_refused(
    tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from signalbox.shell.cli import main

    assert main(["dataplane", "serve", "--log-format", fmt, "--data-dir", str(tmp_path)]) == 2
    assert f"--log-format: {fmt!r} is not one of auto, json, text" in capsys.readouterr().err


# Every character some log reader takes for the end of a line (str.splitlines splits on all).
_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_FORGED = "1999-01-01 00:00:00,000 ERROR signalbox.auth: admin root logged in"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_no_caller_or_provider_string_can_start_a_log_line_of_its_own(fmt: str) -> None:
    from dataplane.providers.classify import protocol_error

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(fmt, service="dataplane", node="edge\u20281"))
    logger = logging.getLogger("dataplane.providers.classify")
    logger.addHandler(handler)
    try:
        logs.bind_request("cid\u2028" + _FORGED, "t-acme\x85" + _FORGED)
        hostile = [c + _FORGED for c in _BREAKS]
        for text in hostile:
            logger.warning("model %s refused", text)
            protocol_error("openai", "no choices", body="oops" + text, credential=None)
            try:
                raise ValueError(text)
            except ValueError:
                logger.exception("caller's %s failed", text)
    finally:
        logger.removeHandler(handler)
        logs.bind_request("")
    lines = stream.getvalue().splitlines()
    if fmt == "json":
        events = [json.loads(line) for line in lines]
        assert len(events) == 3 * len(hostile)
        assert {e["correlation_id"] for e in events} == {"cid\u2028" + _FORGED}
        assert {e["tenant"] for e in events} == {"t-acme\x85" + _FORGED}
        assert {e["node"] for e in events} == {"edge\u20281"}
        assert [e["msg"] for e in events[::3]] == [f"model {text} refused" for text in hostile]
    else:
        # Each record is one line starting with its time; its traceback's lines are indented.
        records = [line for line in lines if not line.startswith("  | ")]
        assert len(records) == 3 * len(hostile), records
        assert not [line for line in records if line.startswith(_FORGED[:10])], records
