"""How a unary answer's JSON document is read, for every adapter: a leading byte order mark, and
the non-standard JSON (``NaN``, ``Infinity``) no provider's documented format holds."""

from __future__ import annotations

import json

import pytest

from dataplane.errors import RateLimited, UpstreamProtocolError
from dataplane.upstream import UpstreamClient

from . import canned
from .fakes import FakeUpstream, Reply
from .samples import HELLO
from .streams import drain, make_adapter
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
