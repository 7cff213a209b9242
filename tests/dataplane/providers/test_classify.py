"""The one error table: tokens before status, prose only for bad requests, transport mapping."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from dataplane.errors import (
    ContextTooLong,
    Overloaded,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamBadRequest,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from dataplane.providers.classify import ErrorFacts, classify_error, classify_transport, parse_retry_after


def test_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28.0 <= (parse_retry_after({"retry-after": future}) or 0.0) <= 30.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-5"}) == 0.0
    assert parse_retry_after({}) is None


@pytest.mark.parametrize(
    ("status", "tokens", "message", "expected"),
    [
        # A token beats the status: OpenAI's 429 is a quota problem or a rate limit.
        (429, ("insufficient_quota",), "", QuotaExhausted),
        (429, ("rate_limit_exceeded",), "", RateLimited),
        # Gemini's bad key is a 400.
        (400, ("API_KEY_INVALID", "INVALID_ARGUMENT", "400"), "", UpstreamAuthFailed),
        (400, (), "This model's maximum context length is 8192 tokens", ContextTooLong),
        # Prose is only trusted on bad-request-shaped errors.
        (500, (), "maximum context length exceeded while retrying", UpstreamUnavailable),
        (529, (), "", Overloaded),
        (408, (), "", UpstreamTimeout),
        (418, (), "", UpstreamBadRequest),
        # No status: an in-band (mid-stream) error, retried like a 503.
        (None, (), "something broke", UpstreamUnavailable),
        (None, ("overloaded_error",), "", Overloaded),
    ],
)
def test_classification_table(
    status: int | None, tokens: tuple[str, ...], message: str, expected: type[ProviderError]
) -> None:
    error = classify_error("p", status=status, facts=ErrorFacts(tokens=tokens, message=message))
    assert type(error) is expected
    assert message not in str(error) or not message


def test_credential_is_redacted_from_message_and_body() -> None:
    error = classify_error(
        "p",
        status=401,
        facts=ErrorFacts(tokens=("sk-secret",)),
        body="key sk-secret is bad",
        credential="sk-secret",
    )
    assert "sk-secret" not in str(error)
    assert error.body == "key [REDACTED] is bad"


def test_retry_delay_in_the_body_is_used_when_no_header() -> None:
    error = classify_error("p", status=429, facts=ErrorFacts(retry_after=4.0), headers={})
    assert error.retry_after == 4.0
    error = classify_error("p", status=429, facts=ErrorFacts(retry_after=4.0), headers={"retry-after": "1"})
    assert error.retry_after == 1.0


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectTimeout("t"), UpstreamTimeout),
        (httpx.ReadTimeout("t"), UpstreamTimeout),
        (httpx.ConnectError("c"), UpstreamUnavailable),
        (httpx.RemoteProtocolError("r"), UpstreamProtocolError),
        (httpx.ReadError("r"), UpstreamUnavailable),
        (httpx.DecodingError("d"), UpstreamProtocolError),
        (TimeoutError(), UpstreamTimeout),
    ],
)
def test_transport_table(exc: Exception, expected: type[ProviderError]) -> None:
    error = classify_transport("p", exc)
    assert type(error) is expected
    assert error.provider == "p"
