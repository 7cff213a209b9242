"""The governance step on the request path: a tenant's compiled profile applied to one request.

``Governance`` is the node's ``GovernanceStep``: for each request it looks up the profile
that governs the caller's tenant in the snapshot the request runs on (its own, else the
platform default) and returns a ``RequestGovernor`` for that request, or None when no
profile applies, so a node without profiles pays one dictionary check per request.

A ``RequestGovernor`` runs, in the pipeline's order:

- **limits** (messages, characters, tools, images): ``OverLimit`` naming the limit, before
  anything else and so before any provider is called;
- **input rules**, in the profile's order, over every text the request carries to the
  provider (message text parts, among them the system prompt and tool results; tool call
  arguments (``json_view``); message names; tool descriptions; tool and response JSON
  schemas, as their JSON text; stop sequences; embedding inputs), each read with the JSON
  escapes JSON does not need decoded (``readable.reading``: ``\\u0040`` in a tool result is
  the ``@`` a model reads): ``block`` refuses naming the rule (never the finding), ``redact`` replaces each
  finding with the rule's placeholder, ``mask`` with a numbered placeholder (``[EMAIL_1]``;
  one number per distinct value) whose value it keeps in this object only, ``classify``
  raises the request's data class (``data_class``, which the pipeline hands routing), and
  ``flag`` records;
- the **output contract** (``check_answer``) on each candidate's answer;
- **output rules** on the answer (``govern_output``), then the masked values put back for the
  caller; for streams, ``stream`` (``dataplane.governance.stream``).

Everything done is appended to the request's ``actions`` (its evidence): the profile and
version, stage, rule, detector, action, count and positions (field and offsets), never a
value. Input rules all see the request as the caller sent it, so offsets are code points of
the caller's text (of a schema: of its JSON text as ``_schema_text`` writes it). Where a
finding overlaps one an earlier rule redacted or masked, the earlier rule's action stands and
a later ``block``, ``classify`` or ``flag`` rule does not count it; a later ``redact`` or
``mask`` rule's finding that reaches beyond the earlier edits (an address around a redacted
term) is counted and its edit covers them all, so that no part of it reaches the model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from dataplane.chat import (
    ChatRequest,
    ChatResponse,
    ContentPart,
    EmbedRequest,
    ImagePart,
    Message,
    TextPart,
    ToolCall,
)
from dataplane.config.model import (
    Action,
    CompiledProfile,
    DataClass,
    Finding,
    OnFailure,
    Rule,
    RuntimeConfig,
    Stage,
    TenantConfig,
)
from dataplane.errors import InvalidRequest
from dataplane.governance.contract import Contracts
from dataplane.governance.detectors._digits import forget, share
from dataplane.governance.errors import CONTRACT_KIND, AnswerBreaksContract, OverLimit, blocked
from dataplane.governance.overlaps import merged, unclaimed
from dataplane.governance.parts import URL, Joined, apply_edits, image_urls, units_of, with_image_urls
from dataplane.governance.readable import find as find_in
from dataplane.governance.readable import reading, unescaped
from dataplane.governance.stream import MAX_POSITIONS, StreamGovernor

PLACEHOLDER = re.compile(r"\[[A-Z0-9_]+_[0-9]+\]")
"""A mask placeholder as sent to the model."""

Actions = list[dict[str, Any]]
_STAGE: dict[Stage, str] = {stage: stage.value for stage in Stage}
_ACTION: dict[Action, str] = {action: action.value for action in Action}
"""An enum member's ``value`` is a property lookup: one per evidence entry adds up."""
_RETRY_CONTRACT = frozenset({CONTRACT_KIND})
_JSON_FIELDS = (".arguments", "json_schema")
"""Fields whose text is JSON: an edit goes in as JSON string content."""


class Governance:
    """The node's governance step (``dataplane.pipeline.GovernanceStep``)."""

    def __init__(self, contracts: Contracts | None = None) -> None:
        self.contracts = contracts if contracts is not None else Contracts()
        """Compiled response schemas, shared by every request of the node."""

    def begin(self, config: RuntimeConfig, tenant: TenantConfig) -> RequestGovernor | None:
        profile = config.governance_for(tenant.id)
        if profile is None:
            return None
        return RequestGovernor(profile, self.contracts)


class RequestGovernor:
    """One request under one profile; holds the request's masked values, in memory only."""

    __slots__ = ("_counts", "_numbers", "_values", "classified_by", "contracts", "data_class", "profile")

    def __init__(self, profile: CompiledProfile, contracts: Contracts) -> None:
        self.profile = profile
        self.contracts = contracts
        self.data_class = DataClass.UNSPECIFIED
        """The class input rules raised the request to (UNSPECIFIED: none did)."""
        self.classified_by = ""
        """The rule that raised it last."""
        self._values: dict[str, str] = {}
        """placeholder -> original value (mask)."""
        self._numbers: dict[tuple[str, str], str] = {}
        """(label, value) -> placeholder: one number per distinct value."""
        self._counts: dict[str, int] = {}
        """label -> the values numbered under it so far (counting them per value would cost
        the request time quadratic in its distinct findings)."""

    # ---- input ----

    def govern_input(self, body: ChatRequest | EmbedRequest, actions: Actions) -> ChatRequest | EmbedRequest:
        """``body`` within the profile's limits and through its input rules; raises the
        refusal of a limit or a block rule."""
        if self.profile.limits:
            self._check_limits(body, actions)
        rules = self.profile.input_rules
        if not rules:
            return body
        texts = _governed_texts(body)
        edited = self._apply(Stage.INPUT, rules, texts, actions)
        return _rebuild(body, edited) if edited is not None else body

    def _apply(
        self, stage: Stage, rules: Sequence[Rule], texts: list[tuple[str, str]], actions: Actions
    ) -> list[tuple[str, str]] | None:
        """``rules`` over ``texts`` (field, text): what they found recorded, a block raised,
        a data class raised; the texts edited by redact and mask rules, None if none was.

        Every rule sees the texts as they came (so offsets are the caller's or the model's,
        and detectors of one profile share their work on one text); a finding overlapping one
        an earlier rule redacted or masked is the earlier rule's, unless the later rule edits
        too and the finding reaches beyond them (``overlaps.merged``). Edits apply at the end, in
        tool call arguments as JSON string content."""
        # A message's text parts are read as one text (``parts.py``): a value split over
        # two parts reaches the model whole.
        units, joins, firsts = units_of(texts)
        # The detectors of the profile share their scan of each text (its digit clusters), in
        # this thread and for this step only.
        share()
        try:
            edits = self._edits(stage, rules, units, joins, actions)
        finally:
            forget()
        if not any(edits):
            return None
        return apply_edits(texts, joins, firsts, edits, _JSON_FIELDS)

    def _edits(
        self,
        stage: Stage,
        rules: Sequence[Rule],
        texts: list[tuple[str, str]],
        joins: list[Joined | None],
        actions: Actions,
    ) -> list[list[tuple[int, int, str]] | None]:
        """``_apply``'s rules over its texts (``joins``: the parts each was joined from, None
        for a text alone): per text, its edits (None: not edited)."""
        # Per text, (start, end, replacement) of each edit so far, sorted by start (edits
        # never overlap). Per finding, only what the evidence and the edit need is made: a
        # position while there is room for one, an edit for redact and mask.
        n = len(texts)
        edits: list[list[tuple[int, int, str]] | None] = [None] * n
        views = [reading(text, field.endswith(URL)) for field, text in texts]
        for rule in rules:
            action = rule.action
            block = action is Action.BLOCK
            redact = action is Action.REDACT
            edit = redact or action is Action.MASK
            placeholder = rule.placeholder
            find = rule.detector.find
            count = 0
            positions: list[dict[str, Any]] = []
            for i in range(n):
                field, text = texts[i]
                view, inner = views[i]
                spans = find_in(find, view, inner)
                if not spans:
                    continue
                taken = edits[i]
                if taken is not None:
                    spans = unclaimed(spans, taken, whole=edit)
                    if not spans:
                        continue
                count += len(spans)
                room = MAX_POSITIONS - len(positions)
                if room > 0:
                    join = joins[i]
                    positions += (
                        [
                            {"field": field, "start": s.start, "end": s.end, "kind": s.kind}
                            for s in spans[:room]
                        ]
                        if join is None
                        else [join.position(s) for s in spans[:room]]
                    )
                if block:
                    break
                if not edit:
                    continue
                if taken is None:
                    edits[i] = [
                        (s.start, s.end, placeholder if redact else self._mask(rule, text, s.start, s.end))
                        for s in spans
                    ]
                else:
                    edits[i] = merged(taken, spans, partial(self._edit, rule, text))
            if not count:
                continue
            entry = self._entry(stage, rule, count, positions)
            actions.append(entry)
            if block:
                raise blocked(rule.name, stage.value, rule.status)
            if action is Action.CLASSIFY:
                entry["data_class"] = rule.data_class.name.lower()
                if rule.data_class >= self.data_class:
                    self.data_class, self.classified_by = rule.data_class, rule.name
        return edits

    def _check_limits(self, body: ChatRequest | EmbedRequest, actions: Actions) -> None:
        limits = self.profile.limits
        if isinstance(body, EmbedRequest):
            counts = {
                "max_messages": len(body.inputs),
                "max_characters": sum(len(t) for t in body.inputs),
                "max_tools": 0,
                "max_images": 0,
            }
        else:
            counts = {
                "max_messages": len(body.messages),
                "max_characters": sum(len(text) for _, text in _texts(body)),
                "max_tools": len(body.tools),
                "max_images": sum(isinstance(p, ImagePart) for m in body.messages for p in m.content),
            }
        for name, found in counts.items():
            allowed = getattr(limits, name)
            if allowed is not None and found > allowed:
                actions.append(
                    {
                        **self._header(Stage.INPUT),
                        "rule": f"limits.{name}",
                        "action": Action.BLOCK.value,
                        "limit": allowed,
                        "count": found,
                    }
                )
                raise OverLimit(name, allowed, found)

    def _edit(self, rule: Rule, text: str, start: int, end: int) -> str:
        """What replaces ``text[start:end]`` under an editing rule."""
        return rule.placeholder if rule.action is Action.REDACT else self._mask(rule, text, start, end)

    def _mask(self, rule: Rule, text: str, start: int, end: int) -> str:
        value = text[start:end]
        key = (rule.label, value)
        placeholder = self._numbers.get(key)
        if placeholder is None:
            number = self._counts[rule.label] = self._counts.get(rule.label, 0) + 1
            placeholder = self._numbers[key] = f"[{rule.label}_{number}]"
            self._values[placeholder] = value
        return placeholder

    # ---- output ----

    @property
    def masks(self) -> bool:
        """Whether values were masked (the answer then gets them back)."""
        return bool(self._values)

    def check_answer(
        self,
        request: ChatRequest,
        response: ChatResponse,
        model: str,
        actions: Actions,
        *,
        streamed: bool = False,
    ) -> None:
        """The output contract: when ``request`` asks for a JSON schema and the profile has a
        contract, ``response`` must meet it. ``flag`` records a failure; ``error`` and
        ``retry`` raise ``AnswerBreaksContract`` (the pipeline lets the dispatcher fall back
        on it for ``retry``). A ``streamed`` answer is checked once it has been sent whole:
        nothing is left to retry, so ``retry`` ends the stream with the error as ``error``
        (the pipeline holds a stream under ``retry`` back whole instead, ``held``, and checks
        each candidate's answer as a unary one)."""
        on_failure = self.profile.contract
        rf = request.response_format
        if on_failure is None or rf is None or rf.type != "json_schema" or rf.schema is None:
            return
        problem = self.contracts.problem(rf.schema, response.message.text)
        if problem is None:
            return
        path, why = problem
        actions.append(
            {
                **self._header(Stage.OUTPUT),
                "rule": "contract",
                "action": OnFailure.ERROR.value
                if streamed and on_failure is OnFailure.RETRY
                else on_failure.value,
                "model": model,
                "path": path,
                "problem": why,
            }
        )
        if on_failure is not OnFailure.FLAG:
            raise AnswerBreaksContract(f"the answer does not meet the response schema at {path}: {why}")

    def stream(self, actions: Actions) -> StreamGovernor:
        """The output rules and the restoring of masked values for a streamed answer."""
        return StreamGovernor(self.profile, self.restore if self._values else None, actions)

    @property
    def fallback_on(self) -> frozenset[str]:
        """With ``retry``, an answer breaking its contract falls back to the next candidate."""
        return _RETRY_CONTRACT if self.profile.contract is OnFailure.RETRY else frozenset()

    def govern_output(self, response: ChatResponse, actions: Actions) -> ChatResponse:
        """The answer (its text and tool call arguments) through the output rules (block
        raises), then, for the caller, with the masked values put back."""
        message = response.message
        text = message.text
        calls = message.tool_calls
        if self.profile.output_rules:
            texts = [("message.text", text)]
            texts += [
                (f"message.tool_calls[{k}].arguments", json_view(c.arguments)) for k, c in enumerate(calls)
            ]
            edited = self._apply(Stage.OUTPUT, self.profile.output_rules, texts, actions)
            if edited is not None:
                text = edited[0][1]
                calls = tuple(replace(c, arguments=t) for c, (_, t) in zip(calls, edited[1:], strict=True))
        if self._values:
            text = self.restore(text)
            calls = tuple(replace(c, arguments=self.restore(c.arguments, in_json=True)) for c in calls)
        if text == message.text and calls == message.tool_calls:
            return response
        content = (TextPart(text),) if text else ()
        return replace(response, message=replace(message, content=content, tool_calls=calls))

    def restore(self, text: str, *, in_json: bool = False) -> str:
        """``text`` with each placeholder of this request replaced by its value (JSON-escaped
        inside JSON text); other bracketed words are left alone."""
        values = self._values

        def value(match: re.Match[str]) -> str:
            found = values.get(match.group(0))
            if found is None:
                return match.group(0)
            return json.dumps(found)[1:-1] if in_json else found

        return PLACEHOLDER.sub(value, text)

    def conceal(self, text: str) -> str:
        """``text`` with this request's masked values replaced by their placeholders: what
        may be kept (a FULL tenant's evidence content) of an answer given back restored."""
        for placeholder, value in self._values.items():
            text = text.replace(value, placeholder)
        return text

    # ---- evidence ----

    def _header(self, stage: Stage) -> dict[str, Any]:
        return {
            "profile": self.profile.profile_id,
            "profile_version": self.profile.version,
            "stage": stage.value,
        }

    def _entry(self, stage: Stage, rule: Rule, count: int, positions: list[dict[str, Any]]) -> dict[str, Any]:
        """The evidence of one rule: ``count`` findings, the first ``MAX_POSITIONS`` of them
        at ``positions`` (field, start, end, kind)."""
        profile = self.profile
        return {
            "profile": profile.profile_id,
            "profile_version": profile.version,
            "stage": _STAGE[stage],
            "rule": rule.name,
            "detector": rule.detector_name,
            "action": _ACTION[rule.action],
            "count": count,
            "positions": positions,
        }


def replace_spans(text: str, spans: Sequence[Finding], replacements: Sequence[str]) -> str:
    """``text`` with each span (sorted, not overlapping) replaced by its replacement (also
    what ``signalbox admin governance test`` shows)."""
    parts: list[str] = []
    at = 0
    for s, replacement in zip(spans, replacements, strict=True):
        parts.append(text[at : s.start])
        parts.append(replacement)
        at = s.end
    parts.append(text[at:])
    return "".join(parts)


def _texts(body: ChatRequest | EmbedRequest) -> list[tuple[str, str]]:
    """(field, text) of every text ``body`` carries, in order."""
    if isinstance(body, EmbedRequest):
        return [(f"inputs[{i}]", text) for i, text in enumerate(body.inputs)]
    out: list[tuple[str, str]] = []
    for i, m in enumerate(body.messages):
        for j, part in enumerate(m.content):
            if isinstance(part, TextPart):
                out.append((f"messages[{i}].content[{j}]", part.text))
        for k, call in enumerate(m.tool_calls):
            out.append((f"messages[{i}].tool_calls[{k}].arguments", json_view(call.arguments)))
    return out


def json_view(text: str) -> str:
    """Tool call arguments (JSON text) as detectors read them: the same JSON with every escape
    it does not need decoded (``\\u0040`` is ``@``, ``\\/`` is ``/``), so that a value
    written with escapes, which the model reads decoded, is found; ``text`` itself when it
    has none or is not JSON (then it is not decoded either)."""
    if "\\" not in text:
        return text
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return text
    return unescaped(text).text


def _schema_text(schema: dict[str, Any]) -> str:
    """A tool's or the response's JSON schema as the text input rules read (non-ASCII as
    itself, so a detector sees the characters the provider will)."""
    return json.dumps(schema, ensure_ascii=False)


def _governed_texts(body: ChatRequest | EmbedRequest) -> list[tuple[str, str]]:
    """(field, text) of every text ``body`` carries to the provider: ``_texts``, then message
    names, tool descriptions, tool schemas, the response schema and its description, image
    URLs and stop sequences. Each of them reaches the model as much as a message does, so a
    rule that skipped them could be bypassed by moving the value into one."""
    out = _texts(body)
    if isinstance(body, EmbedRequest):
        return out
    out += [(f"messages[{i}].name", m.name) for i, m in enumerate(body.messages) if m.name]
    out += [(f"tools[{i}].description", t.description) for i, t in enumerate(body.tools) if t.description]
    out += [
        (f"tools[{i}].parameters_json_schema", _schema_text(t.parameters)) for i, t in enumerate(body.tools)
    ]
    rf = body.response_format
    if rf is not None and rf.schema is not None:
        out.append(("response_format.json_schema", _schema_text(rf.schema)))
    if rf is not None and rf.description:
        out.append(("response_format.json_schema.description", rf.description))
    out += image_urls(body.messages)
    out += [(f"params.stop[{k}]", stop) for k, stop in enumerate(body.params.stop)]
    return out


def _edited_schema(field: str, text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The schema from its edited JSON text (``schema`` itself when unedited)."""
    if text == _schema_text(schema):
        return schema
    try:
        edited = json.loads(text)
    except ValueError:
        edited = None
    if not isinstance(edited, dict):
        # A redacted or masked span took JSON structure with it: refuse rather than send the
        # value on or a schema the caller did not write.
        raise InvalidRequest(field, "an input rule's edit left the JSON schema unreadable")
    return edited


def _rebuild(body: ChatRequest | EmbedRequest, texts: list[tuple[str, str]]) -> ChatRequest | EmbedRequest:
    """``body`` with its texts replaced by ``texts`` (as ``_governed_texts`` listed them);
    parts, calls and messages whose texts are unchanged are kept as they are."""
    if isinstance(body, EmbedRequest):
        return replace(body, inputs=tuple(text for _, text in texts))
    at = 0
    messages: list[Message] = []
    for m in body.messages:
        changed = False
        content: list[ContentPart] = []
        for part in m.content:
            if isinstance(part, TextPart):
                text = texts[at][1]
                at += 1
                if text is not part.text and text != part.text:
                    part = TextPart(text)
                    changed = True
            content.append(part)
        calls: list[ToolCall] = []
        for call in m.tool_calls:
            text = texts[at][1]
            at += 1
            if text is not call.arguments and text != call.arguments:
                call = replace(call, arguments=text)
                changed = True
            calls.append(call)
        messages.append(
            Message(m.role, tuple(content), tuple(calls), m.tool_call_id, m.name) if changed else m
        )
    for i, m in enumerate(messages):
        if m.name:
            if texts[at][1] != m.name:
                messages[i] = replace(m, name=texts[at][1])
            at += 1
    tools = list(body.tools)
    for i, t in enumerate(tools):
        if t.description:
            if texts[at][1] != t.description:
                tools[i] = t = replace(t, description=texts[at][1])
            at += 1
    for i, t in enumerate(tools):
        field, text = texts[at]
        at += 1
        parameters = _edited_schema(field, text, t.parameters)
        if parameters is not t.parameters:
            tools[i] = replace(t, parameters=parameters)
    rf = body.response_format
    if rf is not None and rf.schema is not None:
        field, text = texts[at]
        at += 1
        schema = _edited_schema(field, text, rf.schema)
        if schema is not rf.schema:
            rf = replace(rf, schema=schema)
    if rf is not None and rf.description:
        if texts[at][1] != rf.description:
            rf = replace(rf, description=texts[at][1])
        at += 1
    urls = len(image_urls(body.messages))
    with_image_urls(messages, texts[at : at + urls])
    at += urls
    stop = tuple(text for _, text in texts[at:])
    params = body.params if stop == body.params.stop else replace(body.params, stop=stop)
    return replace(body, messages=tuple(messages), tools=tuple(tools), response_format=rf, params=params)
