"""Findings a streamed answer cannot hold back whole: longer than half the window (a long
blocked phrase), longer than the window (a PEM private key), or overlapping one another.
The governor, called directly, must still act on each: no part of a redacted finding goes
out after it was seen, a blocked one ends the stream, each is recorded once."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest

from dataplane.chat import StreamChunk, ToolCallDelta
from dataplane.governance.errors import Blocked
from tests.dataplane.governance.test_enforce import governor, rule, stream
from tests.dataplane.governance.test_stream_tool_calls import fed

PHRASE = "operation bluebird northern approach"
"""36 characters: more than half of a 48-character window."""


@pytest.mark.parametrize("size", [1, 3, 7, 50])
def test_a_blocked_phrase_longer_than_half_the_window_ends_the_stream_wherever_it_is_cut(size: int) -> None:
    for before in range(0, 60, 3):
        g = governor(
            {"output": {"window": 48, "rules": [rule("c", "terms", "block", options={"terms": [PHRASE]})]}}
        )
        text = "x" * before + " " + PHRASE + " and then some more text follows, the end."
        out, error, actions = stream(g, [text[i : i + size] for i in range(0, len(text), size)])
        assert isinstance(error, Blocked), (before, "".join(out))
        assert PHRASE not in "".join(out)
        (entry,) = actions
        assert entry["count"] == 1
        assert entry["positions"][0]["start"] == before + 1


def _pem() -> tuple[str, list[str]]:
    body = base64.encodebytes(random.Random(7).randbytes(1200)).decode()
    return "-----BEGIN RSA PRIVATE KEY-----\n" + body + "-----END RSA PRIVATE KEY-----", body.splitlines()


@pytest.mark.parametrize("size", [5, 64, 300])
def test_a_private_key_longer_than_the_window_is_redacted_whole(size: int) -> None:
    pem, lines = _pem()
    text = "Here is the key:\n" + pem + "\nkeep it safe." + " more" * 80
    g = governor({"output": {"rules": [rule("cred", "credential", "redact")]}})
    out, error, actions = stream(g, [text[i : i + size] for i in range(0, len(text), size)])
    sent = "".join(out)
    assert error is None
    assert sent.startswith("Here is the key:\n[REDACTED]")
    assert sent.endswith("\nkeep it safe." + " more" * 80)
    assert [line for line in lines if line in sent] == []
    (entry,) = actions
    assert entry["count"] == 1
    assert entry["positions"][0]["start"] == len("Here is the key:\n")


def test_a_private_key_in_streamed_tool_call_arguments_is_redacted_whole() -> None:
    pem, lines = _pem()
    arguments = json.dumps({"key": pem, "note": "keep it safe" + " more" * 80})
    deltas = [arguments[i : i + 40] for i in range(0, len(arguments), 40)]
    chunks = [StreamChunk(tool_calls=(ToolCallDelta(0, "c1", "store", deltas[0]),))]
    chunks += [StreamChunk(tool_calls=(ToolCallDelta(0, arguments_fragment=d),)) for d in deltas[1:]]
    out, error, actions = fed({"output": {"rules": [rule("cred", "credential", "redact")]}}, chunks)
    assert error is None
    sent = "".join(d.arguments_fragment for c in out for d in c.tool_calls)
    note = json.loads(sent)
    assert "[REDACTED]" in note["key"]
    assert note["note"].startswith("keep it safe")
    assert [line for line in lines if line in note["key"]] == []
    assert [a["count"] for a in actions] == [1]


def test_overlapping_streamed_redactions_leave_no_part_of_either_in_the_clear() -> None:
    # The second rule's finding starts inside the first's and goes on past it.
    rules = [
        rule("first", "regex", "redact", options={"patterns": ["alpha-[0-9]+"]}),
        rule("second", "regex", "redact", options={"patterns": ["[0-9]+-omega-secret"]}),
    ]
    g = governor({"output": {"window": 64, "rules": rules}})
    text = "see alpha-12345-omega-secret now" + " and more" * 20
    out, error, _ = stream(g, [text[i : i + 4] for i in range(0, len(text), 4)])
    assert error is None
    sent = "".join(out)
    assert "omega" not in sent
    assert "12345" not in sent
    assert sent.startswith("see [REDACTED] now")


def test_a_finding_that_never_ends_is_followed_a_bounded_length() -> None:
    # A model writing a private key's body forever: followed at most 64 windows, then the
    # look-behind is trimmed again, so each scan's work stays bounded.
    window = 16
    g = governor({"output": {"window": window, "rules": [rule("cred", "credential", "redact")]}})
    actions: list[dict[str, Any]] = []
    s = g.stream(actions)
    s.feed(StreamChunk(text="-----BEGIN PRIVATE KEY-----\n"))
    longest = 0
    for _ in range(3000):
        s.feed(StreamChunk(text="QUJDREVGR0g="))
        longest = max(longest, len(s._content.text))  # type: ignore[attr-defined]
    assert 64 * window <= longest <= 64 * window + 3 * window
    assert [a["count"] for a in actions] == [1]
