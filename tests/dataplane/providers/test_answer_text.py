"""Text an answer holds is the string the provider sent, or the answer is malformed: every
adapter, plainly and streamed. ``str()`` of anything else served a Python repr to the caller
(Ollama content ``{"text": "X"}`` as ``{'text': 'X'}``), as tool-call arguments that are no
object are malformed output and never handed to the caller."""

from __future__ import annotations

import pytest

from dataplane.errors import UpstreamProtocolError
from dataplane.providers.registry import BUILTIN_ADAPTERS
from dataplane.upstream import UpstreamClient

from .fakes import FakeUpstream, Reply
from .samples import HELLO
from .streams import drain, make_adapter
from .test_cross_provider import WIRES

_WIRES = {w.type_name: w for w in WIRES}
SHAPE = r"malformed output \(unexpected JSON shape \(TypeError\)\)"


def altered(reply: Reply, old: bytes, new: bytes) -> Reply:
    """``reply`` with ``old`` replaced by ``new`` in every piece of its body (which holds it)."""
    assert any(isinstance(s, bytes) and old in s for s in reply.body), f"{old!r} is not in the answer"
    body = [s.replace(old, new) if isinstance(s, bytes) else s for s in reply.body]
    return Reply(status=reply.status, body=body, content_type=reply.content_type, headers=reply.headers)


@pytest.mark.parametrize("type_name", sorted(BUILTIN_ADAPTERS))
@pytest.mark.parametrize("text", ['{"text": "X"}', '["a", {"b": 1}]', "5", "true"])
async def test_answer_text_that_is_not_a_string_is_malformed(
    upstream: FakeUpstream, client: UpstreamClient, type_name: str, text: str
) -> None:
    wire = _WIRES[type_name]
    adapter = make_adapter(type_name, upstream.base_url + wire.path, client, settings=wire.settings)
    upstream.enqueue(
        altered(wire.text(), b'"Hello!"', text.encode()),
        altered(wire.stream_reply(*wire.text_stream(["Hello!"])), b'"Hello!"', text.encode()),
    )
    with pytest.raises(UpstreamProtocolError, match=SHAPE):
        await adapter.complete("m", HELLO, timeout=5)
    with pytest.raises(UpstreamProtocolError, match=SHAPE):
        await drain(adapter.stream("m", HELLO, timeout=5))


MODEL_NAMES = {"anthropic": b'"claude-test"', "gemini": b'"gemini-test"', "ollama": b'"llama-test"'}


@pytest.mark.parametrize("type_name", sorted(BUILTIN_ADAPTERS))
async def test_an_upstream_model_name_that_is_not_a_string_is_malformed(
    upstream: FakeUpstream, client: UpstreamClient, type_name: str
) -> None:
    """It was served to the caller as a Python repr too (the answer's model, for operators)."""
    wire = _WIRES[type_name]
    adapter = make_adapter(type_name, upstream.base_url + wire.path, client, settings=wire.settings)
    name = MODEL_NAMES.get(type_name, b'"gpt-test"')
    upstream.enqueue(altered(wire.text(), name, b'{"name": "x"}'), altered(wire.text(), name, b"7"))
    with pytest.raises(UpstreamProtocolError, match=SHAPE):
        await adapter.complete("m", HELLO, timeout=5)
    assert (await adapter.complete("m", HELLO, timeout=5)).upstream_model == "7"
