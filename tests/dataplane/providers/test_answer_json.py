"""How a unary answer's JSON document is read, for every adapter: a leading byte order mark, and
the non-standard JSON (``NaN``, ``Infinity``) no provider's documented format holds."""

from __future__ import annotations

import json

import pytest

from dataplane.errors import RateLimited, UpstreamProtocolError
from dataplane.upstream import UpstreamClient

from . import canned
from .fakes import FakeUpstream, Reply, sse_reply
from .samples import HELLO
from .streams import assemble, drain, make_adapter
from .test_cross_provider import Wire, by_type

BOM = "\ufeff".encode()


def _with_bom(reply: Reply) -> Reply:
    (body,) = reply.body
    assert isinstance(body, bytes)
    return Reply(reply.status, (BOM + body,), reply.content_type, reply.headers)


@by_type
async def test_a_unary_answer_opening_with_a_byte_order_mark_is_read(
    wire: Wire, upstream: FakeUpstream, client: UpstreamClient
) -> None:
    """RFC 8259 8.1 lets a reader ignore a leading BOM; streams already drop one. A unary
    answer with one was refused as invalid JSON (a protocol error, so a fallback or a retry)."""
    upstream.enqueue(_with_bom(wire.text()))
    response = await wire.adapter(upstream.base_url, client).complete("m", HELLO, timeout=5)
    assert response.message.text == "Hello!"


@pytest.mark.parametrize("charset", ["utf-8", "utf-16-le"])
async def test_one_byte_order_mark_is_dropped_whatever_the_charset(
    upstream: FakeUpstream, client: UpstreamClient, charset: str
) -> None:
    """Only one: a document opening with two is no JSON, and refused as malformed."""
    text = json.dumps(canned.openai_completion("Hello!"))
    content_type = f"application/json; charset={charset}"
    upstream.enqueue(
        Reply(body=(("\ufeff" + text).encode(charset),), content_type=content_type),
        Reply(body=(("\ufeff\ufeff" + text).encode(charset),), content_type=content_type),
    )
    adapter = make_adapter("openai", upstream.base_url, client)
    assert (await adapter.complete("m", HELLO, timeout=5)).message.text == "Hello!"
    with pytest.raises(UpstreamProtocolError, match="invalid JSON"):
        await adapter.complete("m", HELLO, timeout=5)


async def test_an_error_body_opening_with_a_byte_order_mark_is_the_error_it_names(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    """A streaming request answered with a plain JSON error (and 200), and an error answer: the
    error is read from the body as without the mark, not refused as invalid JSON."""
    error = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    body = BOM + json.dumps(error).encode()
    upstream.enqueue(Reply(body=(body,)), Reply(status=400, body=(body,)))
    adapter = make_adapter("openai", upstream.base_url, client)
    with pytest.raises(RateLimited):
        await drain(adapter.stream("m", HELLO, timeout=5))
    with pytest.raises(RateLimited):
        await adapter.complete("m", HELLO, timeout=5)


# -- what is not JSON, and what is repaired: orjson only, never the standard library's parser ----


@pytest.fixture
def no_stdlib_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every path into the standard library's JSON parser fails the test: a document orjson
    refused was parsed again by it, several times slower (a second or more of CPU on a 32 MB
    answer), then walked in Python for lone surrogates."""

    def forbidden(*args: object, **kwargs: object) -> object:
        raise AssertionError("the standard library's JSON parser was called on an upstream answer")

    monkeypatch.setattr(json, "loads", forbidden)
    monkeypatch.setattr(json.JSONDecoder, "raw_decode", forbidden)


@pytest.mark.usefixtures("no_stdlib_json")
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_in_a_large_answer_are_malformed_output(
    upstream: FakeUpstream, client: UpstreamClient, literal: str
) -> None:
    """Not JSON (RFC 8259), and in no provider's documented format; a lenient server (Python's
    ``json.dumps``) writes them for a NaN logprob. Refused as malformed like any invalid JSON,
    at orjson's cost, in a 4 MB answer as in a small event."""
    answer = canned.openai_completion("Hello!")
    answer["padding"] = "x" * (4 << 20)
    answer["choices"][0]["logprobs"] = {"content": [{"token": "Hello", "logprob": 0.0}]}
    body = json.dumps(answer).replace('"logprob": 0.0', f'"logprob": {literal}').encode()
    frames = [
        f.replace(b'"created": 1', f'"created": {literal}'.encode()) for f in canned.openai_text_stream("Hi")
    ]
    upstream.enqueue(Reply(body=(body,)), sse_reply(*frames))
    adapter = make_adapter("openai", upstream.base_url, client)
    problem = r"malformed output \(invalid JSON \(NaN and Infinity are not JSON\)\)"
    with pytest.raises(UpstreamProtocolError, match=problem):
        await adapter.complete("m", HELLO, timeout=5)
    with pytest.raises(UpstreamProtocolError, match=problem):
        await drain(adapter.stream("m", HELLO, timeout=5))


@pytest.mark.usefixtures("no_stdlib_json")
async def test_a_number_beyond_a_double_is_malformed_output(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    body = json.dumps(canned.openai_completion("Hello!")).replace('"created": 1', '"created": 1e999')
    upstream.enqueue(Reply(body=(body.encode(),)))
    adapter = make_adapter("openai", upstream.base_url, client)
    with pytest.raises(UpstreamProtocolError, match=r"a number beyond a double's range"):
        await adapter.complete("m", HELLO, timeout=5)


@pytest.mark.usefixtures("no_stdlib_json")
@pytest.mark.parametrize(
    ("sent", "served"),
    [
        (b"Hel\\ud800lo", "Hel\ufffdlo"),  # a lone high surrogate escape
        (b"Hel\\udc00lo", "Hel\ufffdlo"),  # a lone low one
        (b"\\ud83d\\ude00\\ud83d", "\U0001f600\ufffd"),  # a pair, then half of one
        (b"a\\\\ud800", "a\\ud800"),  # an escaped backslash, then text: no escape at all
        (b"Hel\xfflo", "Hel\ufffdlo"),  # a byte no UTF-8 has
        (b"\xff\\ud800", "\ufffd\ufffd"),  # both
    ],
)
async def test_what_a_provider_can_send_within_json_is_repaired_without_the_slow_parser(
    upstream: FakeUpstream, client: UpstreamClient, sent: bytes, served: str
) -> None:
    """Invalid UTF-8 bytes (a server cutting a character between tokens) and lone surrogate
    escapes (valid JSON, no Unicode character) are read as U+FFFD, plainly and streamed."""
    body = json.dumps(canned.openai_completion("TEXT")).encode().replace(b"TEXT", sent)
    frames = [f.replace(b"TEXT", sent) for f in canned.openai_text_stream("TEXT")]
    upstream.enqueue(Reply(body=(body,)), sse_reply(*frames))
    adapter = make_adapter("openai", upstream.base_url, client)
    assert (await adapter.complete("m", HELLO, timeout=5)).message.text == served
    assert assemble(await drain(adapter.stream("m", HELLO, timeout=5))).text == served
