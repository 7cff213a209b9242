"""Which keys each object of an OpenAI request body may hold, and the check of them.

OpenAI's API (its SDKs' param types: ``openai/types/chat/*_param.py``) defines the keys;
those this door implements are taken, those it does not are refused by name unless null
(or false), and any other is refused as OpenAI refuses it, "unrecognized request argument",
named by its path in the body (``messages[0].content[1].cache_control``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dataplane.errors import InvalidRequest, shown

CHAT_FIELDS = frozenset(
    {
        "model", "messages", "tools", "tool_choice", "response_format", "temperature", "top_p",
        "max_tokens", "max_completion_tokens", "stop", "seed", "n", "stream", "stream_options",
        "presence_penalty", "frequency_penalty", "parallel_tool_calls", "metadata", "user", "store",
        "safety_identifier", "prompt_cache_key",
    }
)  # fmt: skip
UNSUPPORTED = frozenset(
    {
        "logprobs", "top_logprobs", "logit_bias", "audio", "modalities", "prediction",
        "web_search_options", "functions", "function_call", "reasoning_effort", "service_tier",
        "verbosity", "prompt_cache_retention", "prompt_cache_options", "moderation",
    }
)  # fmt: skip
"""OpenAI fields this door does not implement: refused by name rather than ignored."""
_SPOKEN = frozenset({"role", "content", "name"})
MESSAGE_FIELDS = {
    "system": (_SPOKEN, frozenset()),
    "developer": (_SPOKEN, frozenset()),
    "user": (_SPOKEN, frozenset()),
    "assistant": (_SPOKEN | {"tool_calls", "refusal", "annotations"}, frozenset({"audio", "function_call"})),
    "tool": (frozenset({"role", "content", "tool_call_id"}), frozenset()),
}
"""What a message of each role may hold (OpenAI's ``ChatCompletion<Role>MessageParam``), and
what of it this door does not implement (the request's ``audio`` and ``functions``
neither), null taken, as an answer's message holds them. A key of another role's message is
refused as any unknown key: ignored, a ``tool_call_id`` on a user message or a ``name`` on a
tool's said nothing to the provider while the caller thought it did. An assistant's
``annotations`` are its answer's (a conversation carries them on as they came): citations of
the answer's text, which the text itself carries on, so they are ignored."""
UNSUPPORTED_ROLES = frozenset({"function"})
"""OpenAI's deprecated ``function`` messages (answers to ``functions``, which this door
does not implement either): refused by name."""
CACHE_BREAKPOINT = frozenset({"prompt_cache_breakpoint"})
PART_FIELDS = {
    "text": (frozenset({"type", "text"}), CACHE_BREAKPOINT),
    "refusal": (frozenset({"type", "refusal"}), frozenset()),
    "image_url": (frozenset({"type", "image_url"}), CACHE_BREAKPOINT),
}
"""What a content part of each type may hold (OpenAI's ``ChatCompletionContentPart*``), and
what of it this door does not implement, null taken: ``prompt_cache_breakpoint``, as the
request's ``prompt_cache_options``."""
IMAGE_FIELDS = frozenset({"url", "detail"})
IMAGE_DETAILS = ("auto", "low", "high", "original")
"""An image's ``detail`` as OpenAI defines it (``original``: not downscaled), for both doors;
sent on as it is where the provider's wire format has it (the OpenAI-style ones), not sent
where it has none (Anthropic, Gemini, Ollama: each reads the image at its own resolution)."""
CALL_FIELDS = frozenset({"id", "type", "function", "index"})
"""A tool call's keys: ``index`` is its place in a streamed answer's deltas, which a client
that joins them carries on (OpenAI takes it): an integer, ignored."""
CALLED_FIELDS = frozenset({"name", "arguments"})
TOOL_FIELDS = frozenset({"type", "function"})
CUSTOM = frozenset({"custom"})
"""A custom tool (its definition, its call, a choice of it): not implemented here."""
FUNCTION_FIELDS = frozenset({"name", "description", "parameters", "strict"})
CHOICE_UNSUPPORTED = frozenset({"custom", "allowed_tools"})
CHOSEN_FIELDS = frozenset({"name"})
FORMAT_FIELDS = frozenset({"type", "json_schema"})
SCHEMA_FIELDS = frozenset({"name", "description", "schema", "strict"})
STREAM_OPTIONS = frozenset({"include_usage"})
STREAM_UNSUPPORTED = frozenset({"include_obfuscation"})
"""Signalbox pads no chunk: ``include_obfuscation`` is taken as false (or null) only."""
EMBED_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user", "metadata"})


def known_fields(
    body: Mapping[str, Any],
    allowed: frozenset[str],
    unsupported: frozenset[str] = frozenset(),
    where: str = "",
) -> None:
    """``where``: the path of ``body`` in the request (``messages[2].``), before each key."""
    for key in body:
        if key in unsupported:
            if body[key] is None or body[key] is False:
                continue
            raise InvalidRequest(where + key, "is not supported by Signalbox")
        if key not in allowed:
            name = key if len(key) <= 64 and key.isprintable() else shown(key, 64)
            raise InvalidRequest(where + name, "unrecognized request argument")
