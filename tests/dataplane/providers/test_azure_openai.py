"""Azure OpenAI adapter: deployment URLs, api-version, api-key header, content-filter errors."""

from __future__ import annotations

import pytest

from dataplane.chat import EmbedRequest, FinishReason
from dataplane.errors import ContentFiltered, ProviderError, RateLimited, UpstreamAuthFailed
from dataplane.providers.base import ProviderAdapter
from dataplane.upstream import UpstreamClient

from .canned import openai_completion, openai_text_stream
from .fakes import FakeUpstream, json_reply, sse_reply
from .samples import HELLO
from .streams import CREDENTIAL, assemble, drain, make_adapter


def azure(upstream: FakeUpstream, client: UpstreamClient, **settings: str) -> ProviderAdapter:
    return make_adapter(
        "azure_openai", upstream.base_url, client, settings={"api_version": "2024-10-21", **settings}
    )


async def test_deployment_url_and_headers(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply(openai_completion("Hi")))
    response = await azure(upstream, client).complete("gpt4o-prod", HELLO, timeout=5)
    assert response.message.text == "Hi"
    sent = upstream.last
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == CREDENTIAL
    assert "authorization" not in sent.headers
    assert "model" not in sent.json


async def test_pinned_deployment_and_stream(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(sse_reply(*openai_text_stream("Hi", " there")))
    adapter = azure(upstream, client, deployment="pinned", api_version="2025-01-01-preview")
    folded = assemble(await drain(adapter.stream("ignored", HELLO, timeout=5)))
    assert folded.text == "Hi there"
    assert folded.finish_reason is FinishReason.STOP
    assert upstream.last.path == "/openai/deployments/pinned/chat/completions"
    assert upstream.last.query == {"api-version": "2025-01-01-preview"}
    assert upstream.last.json["stream_options"] == {"include_usage": True}


async def test_embeddings(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.enqueue(json_reply({"data": [{"index": 0, "embedding": [0.25]}], "usage": {"prompt_tokens": 1}}))
    result = await azure(upstream, client).embed("embed-deploy", EmbedRequest(inputs=("a",)), timeout=5)
    assert result.vectors == ((0.25,),)
    assert upstream.last.path == "/openai/deployments/embed-deploy/embeddings"
    assert upstream.last.query == {"api-version": "2024-10-21"}


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (
            400,
            {
                "error": {
                    "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
                    "type": None,
                    "param": "prompt",
                    "code": "content_filter",
                    "status": 400,
                    "innererror": {"code": "ResponsibleAIPolicyViolation"},
                }
            },
            {},
            ContentFiltered,
        ),
        (
            429,
            {
                "error": {
                    "code": "429",
                    "message": "Requests to the ChatCompletions_Create Operation have exceeded rate limit.",
                }
            },
            {"retry-after": "12"},
            RateLimited,
        ),
        (
            401,
            {"error": {"code": "401", "message": "Access denied due to invalid subscription key."}},
            {},
            UpstreamAuthFailed,
        ),
    ],
)
async def test_error_classification(
    upstream: FakeUpstream,
    client: UpstreamClient,
    status: int,
    body: dict[str, object],
    headers: dict[str, str],
    expected: type[ProviderError],
) -> None:
    upstream.enqueue(json_reply(body, status, headers))
    with pytest.raises(ProviderError) as caught:
        await azure(upstream, client).complete("d", HELLO, timeout=5)
    assert type(caught.value) is expected
    if headers:
        assert caught.value.retry_after == 12.0
