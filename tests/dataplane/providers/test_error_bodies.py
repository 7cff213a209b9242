"""Error answers of shapes their provider's reader does not expect: whatever an upstream puts in
an error body (or an in-band error event), and wherever it is read (a unary error status, a 2xx
error body, a stream opened with an error status, a stream answered with a JSON body), the
caller gets a ``ProviderError`` whose message is the node's own, never an unexpected exception
(which the dispatcher re-raises: INTERNAL for the caller, no fallback, no breaker count)."""

from __future__ import annotations

import pytest

from dataplane.errors import (
    ContextTooLong,
    Overloaded,
    ProviderError,
    RateLimited,
    UpstreamUnavailable,
)
from dataplane.providers.registry import BUILTIN_ADAPTERS
from dataplane.upstream import UpstreamClient

from .fakes import FakeUpstream, raw_reply
from .samples import HELLO
from .streams import drain, make_adapter
from .test_cross_provider import WIRES

MARKER = "UPSTREAM-WORDS"
"""In every hostile body: must not reach the caller's message."""


async def every_path(
    type_name: str, body: str, upstream: FakeUpstream, client: UpstreamClient, *, status: int = 500
) -> list[ProviderError]:
    """The errors ``body`` makes when it is the answer to a unary call with ``status`` and with
    200, and to a stream opened with ``status`` and with 200 (a JSON body, no event stream)."""
    adapter = make_adapter(type_name, upstream.base_url, client)
    upstream.enqueue(
        raw_reply(body, status=status), raw_reply(body), raw_reply(body, status=status), raw_reply(body)
    )
    errors: list[ProviderError] = []
    for _ in range(2):
        with pytest.raises(ProviderError) as unary:
            await adapter.complete("m", HELLO, timeout=5)
        errors.append(unary.value)
    for _ in range(2):
        with pytest.raises(ProviderError) as streamed:
            await drain(adapter.stream("m", HELLO, timeout=5))
        errors.append(streamed.value)
    for error in errors:
        assert MARKER not in str(error)
    return errors


@pytest.mark.parametrize("error", [f'"{MARKER}"', "5", f'["{MARKER}"]', "true"])
async def test_an_error_body_its_reader_cannot_read_is_still_an_error_wherever_it_is_read(
    upstream: FakeUpstream, client: UpstreamClient, error: str
) -> None:
    """``{"type": "error", "error": "x"}``: Anthropic's reader called ``.get`` on the string, outside
    every net of answer parsing: AttributeError out of the adapter. The status decides now."""
    body = f'{{"type": "error", "error": {error}}}'
    errors = await every_path("anthropic", body, upstream, client, status=529)
    assert [type(e) for e in errors] == [Overloaded, UpstreamUnavailable, Overloaded, UpstreamUnavailable]
    assert [str(e) for e in errors] == [
        "anthropic: upstream is overloaded (HTTP 529)",
        "anthropic: upstream failed (in-band error)",
        "anthropic: upstream is overloaded (HTTP 529)",
        "anthropic: upstream failed (in-band error)",
    ]


DEEP = "[" * 1010 + f'"{MARKER}"' + "]" * 1010
"""Within the 1024 levels orjson parses; ``str()`` of it passes the interpreter's recursion limit."""

OVERLOADED_BESIDE_A_MESSAGE_OF_ANOTHER_TYPE = [
    pytest.param(
        "anthropic",
        f'{{"type": "error", "error": {{"type": "overloaded_error", "message": {DEEP}}}}}',
        id="anthropic-deep",
    ),
    pytest.param(
        "anthropic",
        '{"type": "error", "error": {"type": "overloaded_error", "message": {"a": 1}}}',
        id="anthropic-object",
    ),
    pytest.param(
        "openai", f'{{"error": {{"type": "overloaded_error", "message": {DEEP}}}}}', id="openai-deep"
    ),
    pytest.param(
        "mistral",
        f'{{"object": "error", "code": "overloaded", "message": {DEEP}}}',
        id="flat-object-error-deep",
    ),
    pytest.param(
        "gemini",
        f'{{"error": {{"code": 503, "status": "UNAVAILABLE", "message": {DEEP}}}}}',
        id="gemini-deep",
    ),
]


@pytest.mark.parametrize(("type_name", "body"), OVERLOADED_BESIDE_A_MESSAGE_OF_ANOTHER_TYPE)
async def test_an_error_message_that_is_not_text_is_ignored_and_the_error_type_still_decides(
    upstream: FakeUpstream, client: UpstreamClient, type_name: str, body: str
) -> None:
    """A message is read only when it is a string: ``str()`` of one nested 1010 levels deep
    raised RecursionError (and the whole error lost its type to the safety net)."""
    errors = await every_path(type_name, body, upstream, client, status=529)
    # In band, only the error's type says it is an overload (at 529, the status says so too).
    assert [type(e) for e in errors] == [Overloaded] * 4


async def test_a_validation_error_list_is_read_for_its_messages_only(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    """FastAPI's ``{"detail": [...]}`` was read as ``str()`` of the whole list: RecursionError for
    an item nested 1010 levels deep. Its items' ``msg`` texts are what is searched."""
    body = f'{{"detail": [{{"loc": ["body"], "msg": "prompt is too long"}}, 5, {DEEP}]}}'
    errors = await every_path("openai_compatible", body, upstream, client, status=422)
    # Read alike with an error status and in band: one parser, one limit (orjson's 1024 levels).
    # The error statuses' parser was the standard library's, whose recursion limit fell short.
    assert [type(e) for e in errors] == [ContextTooLong] * 4


@pytest.mark.parametrize(
    "body",
    [
        # A lone surrogate escape: read as U+FFFD, as in band, not dropped with the facts.
        '{"error": {"message": "\\ud800 maximum context length", "code": "context_length_exceeded"}}',
        # Nested within orjson's 1024 levels, past the standard library's recursion limit.
        '{"error": {"code": "context_length_exceeded", "param": ' + "[" * 1000 + "]" * 1000 + "}}",
    ],
    ids=["lone-surrogate", "deep-param"],
)
async def test_an_error_status_body_is_read_as_the_same_document_in_band_would_be(
    upstream: FakeUpstream, client: UpstreamClient, body: str
) -> None:
    """The facts of a 400's body decide its class (ContextTooLong, not the bare status's
    UpstreamBadRequest) wherever the body arrives."""
    errors = await every_path("openai", body, upstream, client, status=400)
    assert [type(e) for e in errors] == [ContextTooLong] * 4


@pytest.mark.parametrize("details", ["5", "true", '"RATE"', '{"reason": "x"}'])
async def test_gemini_error_details_that_are_not_a_list_are_ignored(
    upstream: FakeUpstream, client: UpstreamClient, details: str
) -> None:
    """Iterating ``"details": 5`` raised TypeError; the error's status still decides."""
    body = f'{{"error": {{"code": 429, "status": "RESOURCE_EXHAUSTED", "details": {details}}}}}'
    errors = await every_path("gemini", body, upstream, client, status=400)
    assert [type(e) for e in errors] == [RateLimited] * 4


WIRE_PATHS = {w.type_name: (w.path, w.settings) for w in WIRES}


@pytest.mark.parametrize("type_name", sorted(BUILTIN_ADAPTERS))
@pytest.mark.parametrize(
    "retry_after",
    [
        "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
        "1 Jan 10000000000 0:0:0 GMT",
        "Mon, 01 Jan 2026 00:00:00 +99999999999999999999",
        "Mon, 01 Jan 2026 00:00:99999999999 GMT",
    ],
    ids=["year", "short-year", "offset", "second"],
)
async def test_a_retry_after_date_beyond_what_a_date_holds_is_no_retry_after(
    upstream: FakeUpstream, client: UpstreamClient, type_name: str, retry_after: str
) -> None:
    """Parsing the date raised OverflowError (only TypeError and ValueError were caught), out of
    every adapter on a 429: the rate limit is still one, with no delay."""
    path, settings = WIRE_PATHS[type_name]
    adapter = make_adapter(type_name, upstream.base_url + path, client, settings=settings)
    headers = {"Retry-After": retry_after}
    upstream.enqueue(
        raw_reply("{}", status=429, headers=headers), raw_reply("{}", status=429, headers=headers)
    )
    with pytest.raises(RateLimited) as unary:
        await adapter.complete("m", HELLO, timeout=5)
    with pytest.raises(RateLimited) as streamed:
        await drain(adapter.stream("m", HELLO, timeout=5))
    assert unary.value.retry_after is None
    assert streamed.value.retry_after is None


@pytest.mark.parametrize("type_name", sorted(BUILTIN_ADAPTERS))
@pytest.mark.parametrize(
    "body", ["1" * 4301, '{"error": {"code": ' + "9" * 5000 + "}}"], ids=["digits", "long-integer"]
)
async def test_an_error_body_with_an_integer_too_long_to_read_is_classified_by_its_status(
    upstream: FakeUpstream, client: UpstreamClient, type_name: str, body: str
) -> None:
    """``json.loads`` of an integer of more than 4300 digits raises ValueError (Python's limit on
    converting text to int), not JSONDecodeError, which alone was caught."""
    path, settings = WIRE_PATHS[type_name]
    adapter = make_adapter(type_name, upstream.base_url + path, client, settings=settings)
    upstream.enqueue(raw_reply(body, status=503), raw_reply(body, status=500))
    with pytest.raises(Overloaded):
        await adapter.complete("m", HELLO, timeout=5)
    with pytest.raises(UpstreamUnavailable):
        await drain(adapter.stream("m", HELLO, timeout=5))
