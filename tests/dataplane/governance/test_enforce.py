"""The governance step called directly: limits, each input action, output rules, masking
restored for the caller, the output contract, and streams held back at most a window."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.chat import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    FinishReason,
    ImagePart,
    Message,
    ResponseFormat,
    Role,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolDefinition,
)
from dataplane.config.model import DataClass
from dataplane.errors import SignalboxError
from dataplane.governance.contract import MAX_SCHEMA_COST, REGEX_COST, Contracts
from dataplane.governance.detect import Span
from dataplane.governance.enforce import RequestGovernor
from dataplane.governance.errors import AnswerBreaksContract, Blocked, BlockedInvalid, OverLimit
from dataplane.governance.overlaps import merged as _merged
from dataplane.governance.overlaps import unclaimed as _unclaimed
from dataplane.governance.profile import compile_profile
from dataplane.outcome import to_status

EMAIL = "ada.lovelace@example.org"
IBAN = "DE89370400440532013000"


def governor(document: dict[str, Any]) -> RequestGovernor:
    return RequestGovernor(compile_profile(document, version=7, profile_id="gp-test"), Contracts())


def rule(name: str, detector: str, action: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "detector": detector, "action": action, **fields}


def ask(*texts: str, **fields: Any) -> ChatRequest:
    return ChatRequest(messages=tuple(Message(Role.USER, (TextPart(t),)) for t in texts), **fields)


def answer(text: str, *calls: ToolCall) -> ChatResponse:
    return ChatResponse(Message(Role.ASSISTANT, (TextPart(text),), tool_calls=calls), FinishReason.STOP)


def no_values(actions: list[dict[str, Any]], *values: str) -> None:
    dumped = json.dumps(actions)
    for value in values:
        assert value not in dumped


@pytest.mark.parametrize(
    ("limits", "body", "limit"),
    [
        ({"max_messages": 1}, ask("a", "b"), "max_messages"),
        ({"max_characters": 3}, ask("ab", "cd"), "max_characters"),
        ({"max_tools": 0}, ask("a", tools=(ToolDefinition("t"),)), "max_tools"),
        (
            {"max_images": 0},
            ChatRequest((Message(Role.USER, (TextPart("see"), ImagePart(url="https://x.test/i.png"))),)),
            "max_images",
        ),
        ({"max_characters": 5}, EmbedRequest(("abc", "def")), "max_characters"),
    ],
)
def test_a_request_over_a_limit_is_refused_naming_it(limits: dict[str, int], body: Any, limit: str) -> None:
    actions: list[dict[str, Any]] = []
    with pytest.raises(OverLimit) as refused:
        governor({"limits": limits}).govern_input(body, actions)
    outcome = to_status(refused.value)
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT
    assert limit in outcome.message
    assert [a["rule"] for a in actions] == [f"limits.{limit}"]


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        ({}, Blocked, grpc.StatusCode.PERMISSION_DENIED),
        ({"status": "invalid_argument"}, BlockedInvalid, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_block_names_the_rule_never_the_finding(
    status: dict[str, str], error: type, code: grpc.StatusCode
) -> None:
    g = governor({"input": {"rules": [rule("no-iban", "iban", "block", **status)]}})
    actions: list[dict[str, Any]] = []
    with pytest.raises(error) as refused:
        g.govern_input(ask("hello", f"pay to {IBAN} today"), actions)
    outcome = to_status(refused.value)
    assert outcome.code is code
    assert "no-iban" in outcome.message
    assert IBAN not in outcome.message
    (entry,) = actions
    assert entry["rule"] == "no-iban"
    assert entry["action"] == "block"
    assert entry["positions"][0]["field"] == "messages[1].content[0]"
    no_values(actions, IBAN)


def test_every_text_a_request_carries_is_governed() -> None:
    g = governor({"input": {"rules": [rule("pii", "email", "redact", placeholder="[E]")]}})
    body = ChatRequest(
        messages=(
            Message(Role.SYSTEM, (TextPart(f"operator {EMAIL}"),)),
            Message(Role.ASSISTANT, tool_calls=(ToolCall("c1", "send", json.dumps({"to": EMAIL})),)),
            Message(Role.TOOL, (TextPart(f"sent to {EMAIL}"),), tool_call_id="c1"),
        )
    )
    actions: list[dict[str, Any]] = []
    governed = g.govern_input(body, actions)
    assert EMAIL not in repr(governed)
    assert json.loads(governed.messages[1].tool_calls[0].arguments) == {"to": "[E]"}  # type: ignore[union-attr]
    assert actions[0]["count"] == 3
    embedded = g.govern_input(EmbedRequest((f"x {EMAIL}",)), [])
    assert embedded == EmbedRequest(("x [E]",))


def test_masking_sends_placeholders_and_restores_the_values_for_the_caller_only() -> None:
    g = governor({"input": {"rules": [rule("mask-email", "email", "mask")]}})
    other = "grace@example.com"
    actions: list[dict[str, Any]] = []
    body = g.govern_input(ask(f"write to {EMAIL} and {other}, cc {EMAIL}"), actions)
    assert isinstance(body, ChatRequest)
    assert body.messages[0].text == "write to [EMAIL_1] and [EMAIL_2], cc [EMAIL_1]"
    restored = g.govern_output(
        answer("Sent to [EMAIL_2]; [EMAIL_9] is unknown.", ToolCall("c", "mail", '{"to": "[EMAIL_1]"}')),
        actions,
    )
    assert restored.message.text == f"Sent to {other}; [EMAIL_9] is unknown."
    assert json.loads(restored.message.tool_calls[0].arguments) == {"to": EMAIL}
    assert g.conceal(restored.message.text) == "Sent to [EMAIL_2]; [EMAIL_9] is unknown."
    assert actions[0]["count"] == 3
    no_values(actions, EMAIL, other)


def test_classify_raises_the_data_class_and_flag_only_records() -> None:
    g = governor(
        {
            "input": {
                "rules": [
                    rule("iban-confidential", "iban", "classify", data_class="confidential"),
                    rule("email-seen", "email", "flag"),
                ]
            }
        }
    )
    actions: list[dict[str, Any]] = []
    body = ask(f"{IBAN} {EMAIL}")
    assert g.govern_input(body, actions) is body
    assert (g.data_class, g.classified_by) == (DataClass.CONFIDENTIAL, "iban-confidential")
    assert [(a["rule"], a["action"]) for a in actions] == [
        ("iban-confidential", "classify"),
        ("email-seen", "flag"),
    ]
    assert actions[0]["data_class"] == "confidential"
    assert actions[0]["profile"] == "gp-test"
    assert actions[0]["profile_version"] == 7


def test_output_rules_block_redact_and_flag_the_answer() -> None:
    terms = {"terms": ["falcon"]}
    g = governor(
        {
            "output": {
                "rules": [rule("codename", "terms", "redact", options=terms), rule("pii", "email", "flag")]
            }
        }
    )
    actions: list[dict[str, Any]] = []
    out = g.govern_output(answer(f"Project Falcon: ask {EMAIL}"), actions)
    assert out.message.text == f"Project [REDACTED]: ask {EMAIL}"
    assert [(a["stage"], a["rule"]) for a in actions] == [("output", "codename"), ("output", "pii")]
    blocker = governor({"output": {"rules": [rule("codename", "terms", "block", options=terms)]}})
    with pytest.raises(Blocked, match="codename"):
        blocker.govern_output(answer("falcon"), [])


SCHEMA = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}


@pytest.mark.parametrize("on_failure", ["error", "retry", "flag"])
def test_the_output_contract(on_failure: str) -> None:
    g = governor({"output": {"contract": {"on_failure": on_failure}}})
    request = ask("age?", response_format=ResponseFormat("json_schema", "a", SCHEMA))
    actions: list[dict[str, Any]] = []
    g.check_answer(request, answer('{"age": 3}'), "m", actions)
    assert actions == []
    if on_failure == "flag":
        g.check_answer(request, answer('{"age": "secret-three"}'), "m", actions)
    else:
        with pytest.raises(AnswerBreaksContract) as refused:
            g.check_answer(request, answer('{"age": "secret-three"}'), "m", actions)
        assert "$.age" in refused.value.message
        assert "secret-three" not in refused.value.message
    (entry,) = actions
    assert (entry["rule"], entry["action"], entry["path"]) == ("contract", on_failure, "$.age")
    no_values(actions, "secret-three")
    assert g.fallback_on == ({"output_contract"} if on_failure == "retry" else set())


def test_schemas_are_compiled_once_each() -> None:
    contracts = Contracts(limit=2)
    for schema in (SCHEMA, dict(SCHEMA), {"type": "string"}, SCHEMA, {"type": "integer"}):
        contracts.problem(schema, "1")
    assert contracts.compiled == 3  # an equal schema is the same schema
    contracts.problem({"type": "string"}, "1")  # fell out (bounded at 2, least recently used)
    assert contracts.compiled == 4
    assert len(contracts) == 2


def test_schemas_kept_compiled_are_bounded_by_their_cost_not_only_their_count() -> None:
    # Callers choose the schemas: a short one with one pattern compiles to megabytes
    # (``^(?=x)(\w{1,100}\s){1,400}$``, ~9 MiB), so 512 of them held gigabytes.
    contracts = Contracts()
    for i in range(64):
        schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "pattern": "^a+$"}}}
        assert contracts.problem(schema, json.dumps({f"p{i}": "b"})) == (
            f"$.p{i}",
            "breaks schema keyword 'pattern'",
        )
    assert contracts.compiled == 64
    assert len(contracts) <= MAX_SCHEMA_COST // REGEX_COST
    assert 0 < contracts.cost <= MAX_SCHEMA_COST
    # The newest is kept (least recently used first out) ...
    contracts.problem({"type": "object", "properties": {"p63": {"type": "string", "pattern": "^a+$"}}}, "{}")
    assert contracts.compiled == 64
    # ... and one costing more than the whole budget is checked, and not kept.
    many = {"type": "object", "properties": {f"q{i}": {"pattern": "^a$"} for i in range(8)}}
    assert contracts.problem(many, '{"q7": "b"}') == ("$.q7", "breaks schema keyword 'pattern'")
    assert contracts.problem(many, '{"q7": "a"}') is None
    assert contracts.compiled == 66
    assert contracts.cost <= MAX_SCHEMA_COST


def stream(
    g: RequestGovernor, pieces: list[str]
) -> tuple[list[str], SignalboxError | None, list[dict[str, Any]]]:
    actions: list[dict[str, Any]] = []
    s = g.stream(actions)
    out: list[str] = []
    try:
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            out.append(
                s.feed(StreamChunk(text=piece, finish_reason=FinishReason.STOP if last else None)).text
            )
        tail = s.finish()
        assert tail is None
    except SignalboxError as exc:
        return out, exc, actions
    return out, None, actions


def test_a_stream_is_held_back_at_most_the_window_and_a_blocked_term_ends_it_in_time() -> None:
    window = 32
    g = governor(
        {
            "output": {
                "window": window,
                "rules": [rule("codename", "terms", "block", options={"terms": ["falcon"]})],
            }
        }
    )
    pieces = [f"w{i:02d} " for i in range(40)]
    k = 20
    pieces[k] = "fal"
    pieces[k + 1] = "con "
    out, error, actions = stream(g, pieces)
    assert isinstance(error, Blocked)
    # Never more than the window held back; the term never went out; ended by chunk k + window.
    sent = "".join(out)
    assert "fal" not in sent
    assert len("".join(pieces[: len(out)])) - len(sent) <= window
    assert len(out) - 1 <= k + window
    (entry,) = actions
    assert entry["positions"][0]["chunk"] == k
    assert entry["positions"][0]["start"] == len("".join(pieces[:k]))


def test_a_stream_redacts_across_chunks_and_restores_split_placeholders() -> None:
    g = governor(
        {
            "input": {"rules": [rule("mask-email", "email", "mask")]},
            "output": {
                "window": 16,
                "rules": [rule("codename", "terms", "redact", options={"terms": ["falcon"]})],
            },
        }
    )
    g.govern_input(ask(f"mail {EMAIL}"), [])
    text = "Dear [EMAIL_1], project falcon is on. Bye [EMAIL_1]!"
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    out, error, actions = stream(g, pieces)
    assert error is None
    assert "".join(out) == f"Dear {EMAIL}, project [REDACTED] is on. Bye {EMAIL}!"
    assert [a["rule"] for a in actions] == ["codename"]
    no_values(actions, EMAIL)
    # Masks alone hold back only a partial placeholder.
    g2 = governor({"input": {"rules": [rule("mask-email", "email", "mask")]}})
    g2.govern_input(ask(f"mail {EMAIL}"), [])
    out, _, _ = stream(g2, ["Hi [EMA", "IL_1] ok", " done"])
    assert out == ["Hi ", f"{EMAIL} ok", " done"]


def test_rules_see_the_callers_text_and_an_earlier_redaction_wins_an_overlap() -> None:
    g = governor(
        {
            "input": {
                "rules": [
                    rule("pii", "email", "redact"),
                    rule("word", "terms", "flag", options={"terms": ["example"]}),
                ]
            }
        }
    )
    actions: list[dict[str, Any]] = []
    text = f"an example: {EMAIL}"
    body = g.govern_input(ask(text), actions)
    assert isinstance(body, ChatRequest)
    assert body.messages[0].text == "an example: [REDACTED]"
    pii, word = actions
    assert (pii["positions"][0]["start"], pii["positions"][0]["end"]) == (text.index(EMAIL), len(text))
    # "example" inside the redacted address is the earlier rule's; the other one is counted.
    assert word["count"] == 1
    assert word["positions"][0]["start"] == 3


def test_output_rules_cover_tool_call_arguments_and_keep_them_json() -> None:
    g = governor({"output": {"rules": [rule("pii", "email", "redact", placeholder='["email"]')]}})
    actions: list[dict[str, Any]] = []
    out = g.govern_output(answer("done", ToolCall("c1", "send", json.dumps({"to": EMAIL}))), actions)
    assert json.loads(out.message.tool_calls[0].arguments) == {"to": '["email"]'}
    assert out.message.text == "done"
    (entry,) = actions
    assert entry["positions"][0]["field"] == "message.tool_calls[0].arguments"
    no_values(actions, EMAIL)
    blocker = governor({"output": {"rules": [rule("pii", "email", "block")]}})
    with pytest.raises(Blocked):
        blocker.govern_output(answer("done", ToolCall("c1", "send", json.dumps({"to": EMAIL}))), [])


def _disjoint(points: list[int], empty: list[bool]) -> list[tuple[int, int]]:
    """Sorted, disjoint ranges from sorted distinct points, some made empty."""
    ranges = []
    for k in range(0, len(points) - 1, 2):
        start, end = points[k], points[k + 1]
        ranges.append((start, start if empty[k // 2 % len(empty)] else end))
    return ranges


_POINTS = st.lists(st.integers(0, 80), max_size=14, unique=True).map(sorted)


@settings(max_examples=400, deadline=None)
@given(_POINTS, _POINTS, st.lists(st.booleans(), min_size=1, max_size=7))
def test_a_finding_is_dropped_exactly_when_it_overlaps_an_earlier_edit(
    claimed_points: list[int], span_points: list[int], empty: list[bool]
) -> None:
    """The walk over sorted edits decides as a per-character bitmap of the claimed text would."""
    claimed = [(start, end, "[X]") for start, end in _disjoint(claimed_points, empty)]
    spans = [Span(start, end, "k") for start, end in _disjoint(span_points, empty[::-1])]
    bitmap = bytearray(81)
    for start, end, _ in claimed:
        bitmap[start:end] = b"\x01" * (end - start)
    assert _unclaimed(spans, claimed) == [s for s in spans if bitmap.find(1, s.start, s.end) < 0]


def test_a_later_redaction_reaching_beyond_an_earlier_one_covers_both() -> None:
    # A term redacted first must not leave the address around it half sent: the email rule
    # redacts the whole address, unary and masked alike.
    rules = [rule("co", "terms", "redact", options={"terms": ["acme"]}), rule("pii", "email", "redact")]
    g = governor({"input": {"rules": rules}})
    actions: list[dict[str, Any]] = []
    text = "write to jane.doe@acme.example or acme today"
    body = g.govern_input(ask(text), actions)
    assert isinstance(body, ChatRequest)
    assert body.messages[0].text == "write to [REDACTED] or [REDACTED] today"
    assert [(a["rule"], a["count"]) for a in actions] == [("co", 2), ("pii", 1)]
    masker = governor({"input": {"rules": [rules[0], rule("pii", "email", "mask")]}})
    body = masker.govern_input(ask(text), [])
    assert isinstance(body, ChatRequest)
    assert body.messages[0].text == "write to [EMAIL_1] or [REDACTED] today"
    assert masker.restore(body.messages[0].text) == "write to jane.doe@acme.example or [REDACTED] today"
    # A finding an earlier edit holds whole stays the earlier rule's.
    inner = governor({"input": {"rules": [rule("pii", "email", "redact"), rules[0]]}})
    actions = []
    body = inner.govern_input(ask(text), actions)
    assert isinstance(body, ChatRequest)
    assert body.messages[0].text == "write to [REDACTED] or [REDACTED] today"
    assert [(a["rule"], a["count"]) for a in actions] == [("pii", 1), ("co", 1)]


@settings(max_examples=400, deadline=None)
@given(_POINTS, _POINTS, st.lists(st.booleans(), min_size=1, max_size=7))
def test_merged_edits_cover_every_earlier_edit_and_every_later_finding(
    claimed_points: list[int], span_points: list[int], empty: list[bool]
) -> None:
    claimed = [(start, end, "[X]") for start, end in _disjoint(claimed_points, empty) if start < end]
    spans = [Span(start, end, "k") for start, end in _disjoint(span_points, [False])]
    kept = _unclaimed(spans, claimed, whole=True)
    assert kept == [s for s in spans if not any(a <= s.start and s.end <= b for a, b, _ in claimed)]
    merged = _merged(claimed, kept, lambda start, end: f"[{start}:{end}]")
    covered = bytearray(81)
    for start, end, _ in claimed:
        covered[start:end] = b"\x01" * (end - start)
    for s in kept:
        covered[s.start : s.end] = b"\x01" * (s.end - s.start)
    result = bytearray(81)
    for k, (start, end, replacement) in enumerate(merged):
        assert start < end
        assert k == 0 or merged[k - 1][1] <= start  # sorted, disjoint
        assert covered.find(0, start, end) < 0  # nothing edited that no rule found
        assert replacement == "[X]" if (start, end, "[X]") in claimed else replacement == f"[{start}:{end}]"
        result[start:end] = b"\x01" * (end - start)
    assert result == covered


def test_values_written_with_json_escapes_in_tool_call_arguments_are_found() -> None:
    # The model reads {"to": "ada.lovelace\u0040example.org"} decoded: an escape hides nothing.
    escaped = json.dumps({"to": EMAIL, "card": "4111 1111 1111 1111"}).replace("@", "\\u0040")
    escaped = escaped.replace("4111", "\\u0034111").replace(".org", "\\u002eorg")
    assert json.loads(escaped)["to"] == EMAIL
    call = ToolCall("c1", "send", escaped)
    body = ChatRequest(
        messages=(Message(Role.USER, (TextPart("hi"),)), Message(Role.ASSISTANT, tool_calls=(call,)))
    )
    with pytest.raises(Blocked):
        governor({"input": {"rules": [rule("pii", "email", "block")]}}).govern_input(body, [])
    actions: list[dict[str, Any]] = []
    redactor = governor(
        {"input": {"rules": [rule("pii", "email", "redact"), rule("c", "payment_card", "redact")]}}
    )
    out = redactor.govern_input(body, actions)
    assert isinstance(out, ChatRequest)
    assert json.loads(out.messages[1].tool_calls[0].arguments) == {"to": "[REDACTED]", "card": "[REDACTED]"}
    assert [a["count"] for a in actions] == [1, 1]
    # An escaped backslash is no escape: "\\u0040" is a backslash and "u0040", as written.
    literal = json.dumps({"note": "jane.doe\\u0040corp.example"})
    body = ChatRequest(messages=(Message(Role.ASSISTANT, tool_calls=(ToolCall("c1", "f", literal),)),))
    assert governor({"input": {"rules": [rule("pii", "email", "block")]}}).govern_input(body, []) is body
    # Answers alike.
    output = governor(
        {"output": {"rules": [rule("pii", "email", "redact"), rule("c", "payment_card", "redact")]}}
    )
    answered = output.govern_output(answer("done", ToolCall("c2", "send", escaped)), [])
    assert json.loads(answered.message.tool_calls[0].arguments) == {"to": "[REDACTED]", "card": "[REDACTED]"}
