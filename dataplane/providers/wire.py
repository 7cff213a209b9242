"""Translation steps that are the same for every provider, written once.

System-prompt hoisting, tool-argument JSON in both directions, synthesized
tool-call ids, image encodings, and the stream-side tool-call indexer that
makes every provider's tool-call deltas look alike.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable
from typing import Any, TypeVar

import orjson

from dataplane.chat import (
    ChatResponse,
    FinishReason,
    ImagePart,
    Message,
    Role,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from dataplane.errors import UpstreamBadRequest
from dataplane.random_ids import token_hex

from .classify import protocol_error

SYSTEM_ROLES = frozenset({Role.SYSTEM, Role.DEVELOPER})


def system_prompt(messages: Iterable[Message]) -> str:
    """All system and developer messages joined with ``\\n``, in order.

    Providers with a single top-level system field (Anthropic, Gemini) lose
    where these messages stood; this is the same rule Anthropic's own
    OpenAI-compatible layer applies.
    """
    return "\n".join(m.text for m in messages if m.role in SYSTEM_ROLES)


def conversation(messages: Iterable[Message]) -> list[Message]:
    """The messages that are not system or developer messages."""
    return [m for m in messages if m.role not in SYSTEM_ROLES]


def arguments_object(provider: str, call: ToolCall) -> dict[str, Any]:
    """A tool call's JSON-text arguments as the object providers like Anthropic need.

    Empty text means no arguments. Anything that is not a JSON object is the
    caller's mistake, reported as a bad request naming the call.
    """
    if not call.arguments.strip():
        return {}
    try:
        value = json.loads(call.arguments)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamBadRequest(
            f"{provider}: arguments of tool call {call.id or call.name!r} are not a JSON object",
            provider=provider,
        )
    return value


def arguments_text(provider: str, value: object) -> str:
    """A whole tool call's provider-side arguments (an object, or JSON text of one) as JSON text.

    The gateway's rule for tool calls a provider got wrong: arguments that are
    not a JSON object (invalid JSON, a list, a number) are malformed output,
    an ``UpstreamProtocolError`` (retryable, a default fallback kind), never
    handed to the caller, whose tool would fail on them anyway. OpenAI warns
    its models "do not always generate valid JSON"; a caller of this gateway
    gets a JSON object or an error. No arguments at all (``None``, ``""``)
    mean ``{}``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return "{}"
    if isinstance(value, str):
        text = value
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise protocol_error(
                provider, "tool call arguments are not valid JSON", credential=None
            ) from None
        if isinstance(value, dict):
            return text
    if not isinstance(value, dict):
        raise protocol_error(provider, "tool call arguments are not a JSON object", credential=None)
    return json.dumps(value, ensure_ascii=False)


def tool_name(provider: str, value: object) -> str:
    """A tool call's name as the provider sent it. A call without one (missing, empty, not a
    string) is malformed output, like arguments that are not an object: no caller can run it."""
    if not isinstance(value, str) or not value:
        raise protocol_error(provider, "a tool call has no name", credential=None)
    return value


def call_index(provider: str, value: object) -> int:
    """A streamed tool call's own index (OpenAI's ``index``; missing or null: 0), a whole number
    below ``MAX_ANSWER_TOOL_CALLS``. Anything else is malformed output: used as it came, as a key
    of the calls so far, a stream of events each with another megabyte-long string index held
    every one of them, none counted as answer."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_ANSWER_TOOL_CALLS:
        raise protocol_error(provider, "a tool call's index is not a whole number in range", credential=None)
    return value


def answer_text(value: object) -> str:
    """Text of the answer as an upstream sent it (message content, a text block or part, a
    fragment of tool-call arguments); none or null: "". Anything else raises TypeError, which
    the adapters' parsing reports as malformed output (``HttpAdapter.decoding``), as it does
    for tool-call arguments that are no object: ``str()`` served ``{"text": "X"}`` to the
    caller as the Python repr ``{'text': 'X'}``."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError("answer text is not a string")
    return value


def answer_label(value: object) -> str:
    """An identifier an upstream sent (a response's or tool call's id, the model's name): a
    string, or a whole number written in digits; none or null: "". Anything else raises
    TypeError (malformed output, see ``answer_text``)."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise TypeError("an identifier is not a string")
    return value


def fragment_text(value: object) -> str:
    """A streamed piece of tool-call arguments as text (checked whole at the call's end)."""
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value, ensure_ascii=False)


def check_arguments(provider: str, text: str) -> None:
    """Raise the protocol error of ``arguments_text`` when a streamed call's assembled arguments
    are not a JSON object."""
    arguments_text(provider, text)


MAX_TOKEN_COUNT = 1_000_000_000
"""The largest token count a usage field may hold: a hundred times the largest context window
of any model, far below what would overflow a cost or a budget (``accounting``, ``quota``)."""


def token_count(value: object) -> int:
    """A usage field a provider sent, as a token count; missing or null means 0.

    Usage is what the node bills and budgets by, and a provider's answer is
    untrusted: a negative count would credit a tenant's budget, an enormous one
    would exhaust it (or overflow the caller's unsigned usage fields), and
    ``1e999`` would raise ``OverflowError`` from ``int``. Anything but a whole
    number from 0 to ``MAX_TOKEN_COUNT`` raises ``ValueError``, which the
    adapters' parsing reports as malformed output (``HttpAdapter.decoding``):
    the answer cannot be accounted for, so it is not served as if it could.
    """
    if not value:
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a token count is not a finite number")
    if not isinstance(value, int | float | str):
        raise TypeError("a token count is not a number")
    count = int(value)  # a float is cut to its whole part, a string of digits read, as before
    if not 0 <= count <= MAX_TOKEN_COUNT:
        raise ValueError("a token count is out of range")
    return count


def synthesize_call_id() -> str:
    """An id for a tool call whose provider gave none (Gemini, Ollama)."""
    return "call_" + token_hex(12)


def tool_names_by_id(messages: Iterable[Message]) -> dict[str, str]:
    """Tool-call id → tool name, from the assistant turns; answers find their call's name here."""
    return {c.id: c.name for m in messages for c in m.tool_calls}


def image_base64(part: ImagePart) -> tuple[str, str] | None:
    """``(media_type, base64 data)`` for inline images, including ``data:`` URLs; else None."""
    if part.data is not None:
        return part.media_type or "application/octet-stream", base64.b64encode(part.data).decode("ascii")
    url = part.url or ""
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if encoding == "base64":
            return media_type or part.media_type, data
        return media_type or part.media_type, base64.b64encode(data.encode()).decode("ascii")
    return None


def image_url(part: ImagePart) -> str:
    """An image as a URL, turning inline bytes into a ``data:`` URL."""
    if part.url:
        return part.url
    inline = image_base64(part)
    assert inline is not None  # an ImagePart has a url or data
    return f"data:{inline[0]};base64,{inline[1]}"


AnyStr = TypeVar("AnyStr", str, bytes)
_BOM = "\ufeff"
_BOM_BYTES = _BOM.encode()


def without_bom(document: AnyStr) -> AnyStr:
    """A JSON document without one leading byte order mark, which RFC 8259 (8.1) lets a reader
    ignore and some servers write (an event stream's is dropped as it is decoded, ``_text``);
    a second one is not ignored: that document is no JSON."""
    if isinstance(document, bytes):
        return document[3:] if document.startswith(_BOM_BYTES) else document
    return document[1:] if document.startswith(_BOM) else document


def loads(provider: str, text: str | bytes, *, credential: str | None) -> Any:
    """Parse a JSON document the upstream sent (text, or UTF-8 bytes); malformed JSON is a
    protocol error (``text`` kept for operators with ``credential`` redacted).

    orjson parses, and nothing else: a document of up to ``MAX_BODY_BYTES`` costs at most
    three of its passes and two linear repairs, never the standard library's parser (several
    times slower on a 32 MB answer, and its results walked again in Python). Of what orjson
    refuses, two things a provider can send within its documented format are repaired:

    - invalid UTF-8 bytes (a server cutting a character between tokens) are read as U+FFFD;
    - a lone surrogate escape (``"\\ud800"``, valid JSON but no Unicode character) is read
      as U+FFFD too: kept, it reached the caller's answer, which no UTF-8 encoder (protobuf,
      the HTTP door's JSON) can write, and the request ended INTERNAL after the provider had
      answered.

    What is not JSON at all is refused like any other malformed answer, whatever a lenient
    parser would make of it: ``NaN``, ``Infinity`` and ``-Infinity`` (Python's ``json.dumps``
    writes them; RFC 8259 has no such values and no provider documents them), a number
    beyond a double (``1e999``, which no field of an answer can use), and a document nested
    deeper than 1024 levels. (orjson reads an integer beyond 64 bits as a float: no field a
    provider sends is one.)
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        error = exc
    if isinstance(text, bytes) and "UTF-8" in error.msg:
        text = text.decode("utf-8", errors="replace")
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            error = exc
    if "surrogate" in error.msg:
        if isinstance(text, bytes):
            text = _LONE_SURROGATE_BYTES.sub(_replace_lone_bytes, text)
        else:
            text = _LONE_SURROGATE.sub(_replace_lone, text)
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            error = exc
    body = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
    raise protocol_error(provider, _json_problem(error, body), body, credential=credential) from None


_SURROGATES = (
    r"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)
"""An escaped backslash (consumed whole, so the ``u`` after it starts no escape), a surrogate
pair, or a lone surrogate escape: matched left to right, only the last is replaced."""
_LONE_SURROGATE = re.compile(_SURROGATES)
_LONE_SURROGATE_BYTES = re.compile(_SURROGATES.encode())
_NOT_JSON = ("NaN", "Infinity", "-Infinity")


def _replace_lone(match: re.Match[str]) -> str:
    found = match.group()
    return found if len(found) != 6 else "\\ufffd"


def _replace_lone_bytes(match: re.Match[bytes]) -> bytes:
    found = match.group()
    return found if len(found) != 6 else b"\\ufffd"


def _json_problem(error: orjson.JSONDecodeError, text: str) -> str:
    """What is wrong with a document orjson refused, in our words."""
    if "depth" in error.msg or "recursion" in error.msg:
        return "JSON nested too deeply"
    if "infinity" in error.msg:
        return "invalid JSON (a number beyond a double's range)"
    found = text[max(error.pos - 1, 0) : error.pos + 9]  # orjson's pos: characters of a str
    if any(literal in found for literal in _NOT_JSON):
        return "invalid JSON (NaN and Infinity are not JSON)"
    return "invalid JSON"


def dumps(body: Any) -> bytes:
    """A request body as compact UTF-8 JSON: orjson, or the standard library for what orjson
    refuses (integers beyond 64 bits, non-string keys). A non-finite float becomes ``null``
    (request validation lets none through)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def assistant_response(
    text: str,
    calls: Iterable[ToolCall],
    reason: FinishReason | None,
    *,
    usage: Usage | None,
    upstream_model: object = "",
    upstream_id: object = "",
    provider: str,
) -> ChatResponse:
    """The normalized answer: text (if any) and tool calls, with the finish reason settled. More
    than ``MAX_ANSWER_TOOL_CALLS`` calls are malformed output, as in a stream: bounded only by
    the body's 32 MiB, ~500,000 empty calls reached the caller and the evidence."""
    calls = tuple(calls)
    if len(calls) > MAX_ANSWER_TOOL_CALLS:
        raise protocol_error(
            provider, f"more than {MAX_ANSWER_TOOL_CALLS} tool calls in one answer", credential=None
        )
    return ChatResponse(
        message=Message(role=Role.ASSISTANT, content=(TextPart(text),) if text else (), tool_calls=calls),
        finish_reason=settle_finish(reason, bool(calls)),
        usage=usage,
        upstream_model=answer_label(upstream_model),
        upstream_id=answer_label(upstream_id),
    )


def settle_finish(reason: FinishReason | None, saw_tool_calls: bool) -> FinishReason:
    """Some providers say ``stop`` next to tool calls (Gemini, Ollama); tool calls win."""
    if saw_tool_calls and reason in (None, FinishReason.STOP):
        return FinishReason.TOOL_CALLS
    return reason or FinishReason.STOP


MAX_ANSWER_TOOL_CALLS = 8192
"""Most tool calls one answer (unary or streamed) may carry, and the bound of a provider's own call index
(OpenAI's ``index``): as many as a request may carry back (``validation.MAX_TOOL_CALLS``). What
a decoder holds per call (its key, id, argument fragments) is bounded by it, not only by the
characters of answer the stream is allowed."""


class ToolCallIndexer:
    """Gives each streamed tool call the next index 0, 1, ... and its first delta the id and name.

    ``key`` is whatever identifies a call in the provider's stream (OpenAI
    ``index``, an Anthropic block index, a running counter). A new ``id`` at
    an already-seen key starts a new call: some OpenAI-compatible servers send
    every complete call with ``index`` 0. More than ``MAX_ANSWER_TOOL_CALLS``
    calls are malformed output.
    """

    __slots__ = ("_current", "_provider", "count")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._current: dict[object, tuple[int, str]] = {}
        self.count = 0  # calls started so far, which is also the next index

    def is_new(self, key: object, call_id: str) -> bool:
        """Whether a delta at ``key`` carrying ``call_id`` (maybe empty) begins a call."""
        current = self._current.get(key)
        return current is None or (bool(call_id) and call_id != current[1])

    def start(self, key: object, call_id: str, name: str, fragment: str = "") -> ToolCallDelta:
        """Begin a new call at ``key``; ``call_id`` may be empty (then one is made up)."""
        if self.count >= MAX_ANSWER_TOOL_CALLS:
            raise protocol_error(
                self._provider, f"more than {MAX_ANSWER_TOOL_CALLS} tool calls in one answer", credential=None
            )
        call_id = call_id or synthesize_call_id()
        self._current[key] = (self.count, call_id)
        self.count += 1
        return ToolCallDelta(index=self.count - 1, id=call_id, name=name, arguments_fragment=fragment)

    def fragment(self, key: object, fragment: str) -> ToolCallDelta | None:
        """A continuation delta for the call at ``key``; None when there is nothing to say."""
        current = self._current.get(key)
        if current is None or not fragment:
            return None
        return ToolCallDelta(index=current[0], arguments_fragment=fragment)
