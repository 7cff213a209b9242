"""The one error table: tokens before status, prose only for bad requests, transport mapping."""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import time
from importlib import resources

import grpc
import pytest

from dataplane.config.model import DEFAULT_FALLBACK_ON
from dataplane.errors import (
    ContextTooLong,
    Overloaded,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamBadRequest,
    UpstreamModelNotFound,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from dataplane.policy.language import FALLBACK_KINDS
from dataplane.providers.classify import (
    DETAIL_LIMIT,
    ErrorFacts,
    classify_error,
    classify_transport,
    operator_detail,
    parse_retry_after,
    protocol_error,
    redact_credential,
)
from dataplane.upstream import errors as upstream_errors


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
        # Payment Required (DeepSeek, OpenRouter): the node's account, not the caller's request.
        (402, ("invalid_request_error",), "Insufficient Balance", QuotaExhausted),
        # No status: an in-band (mid-stream) error, retried like a 503.
        (None, (), "something broke", UpstreamUnavailable),
        (None, ("overloaded_error",), "", Overloaded),
    ],
)
def test_classification_table(
    status: int | None, tokens: tuple[str, ...], message: str, expected: type[ProviderError]
) -> None:
    error = classify_error(
        "p", status=status, facts=ErrorFacts(tokens=tokens, message=message), credential=None
    )
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
    error = classify_error("p", status=429, facts=ErrorFacts(retry_after=4.0), headers={}, credential=None)
    assert error.retry_after == 4.0
    error = classify_error(
        "p", status=429, facts=ErrorFacts(retry_after=4.0), headers={"retry-after": "1"}, credential=None
    )
    assert error.retry_after == 1.0


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (upstream_errors.ConnectTimeout("t"), UpstreamTimeout),
        (upstream_errors.ReadTimeout("t"), UpstreamTimeout),
        (upstream_errors.ConnectError("c"), UpstreamUnavailable),
        (upstream_errors.RemoteProtocolError("r"), UpstreamProtocolError),
        (upstream_errors.ReadError("r"), UpstreamUnavailable),
        (upstream_errors.DecodingError("d"), UpstreamProtocolError),
        (TimeoutError(), UpstreamTimeout),
    ],
)
def test_transport_table(exc: Exception, expected: type[ProviderError]) -> None:
    error = classify_transport("p", exc, credential=None)
    assert type(error) is expected
    assert error.provider == "p"


# -- hostile upstreams: the caller's message is ours alone, the operator's detail is clean ----

SECRET = "sk-PROJ-abcdefghijklmnopqrstuvwxyz0123ffff"


def _echoes(secret: str) -> dict[str, str]:
    """What an upstream might echo of the node's credential."""
    raw = secret.encode()
    return {
        "plain": secret,
        "upper": secret.upper(),
        "lower": secret.lower(),
        "masked": f"{secret[:6]}...{secret[-4:]}",
        "masked-stars": f"{secret[:3]}{'*' * 20}{secret[-4:]}",
        "masked-ellipsis": f"{secret[:7]}\u2026{secret[-4:]}",
        "base64": base64.b64encode(raw).decode(),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "base64-in-basic-auth": base64.b64encode(b"user:" + raw).decode(),
        "base64-in-bearer": base64.b64encode(b"Bearer " + raw).decode(),
        "zero-width-split": secret[:5] + "\u200b" + secret[5:],
        "control-split": secret[:9] + "\x00\x1b" + secret[9:],
        "cut-off-head": secret[:16],
        "cut-off-tail": "..." + secret[-14:],
    }


def _revealed(text: str, secret: str) -> list[str]:
    """The echo forms of ``secret`` still findable in ``text`` (as the forms themselves)."""
    return [name for name, form in _echoes(secret).items() if form in text]


@pytest.mark.parametrize("form", sorted(_echoes(SECRET)))
def test_no_form_of_the_credential_survives_into_message_body_or_log(
    form: str, caplog: pytest.LogCaptureFixture
) -> None:
    echo = _echoes(SECRET)[form]
    caplog.set_level(logging.DEBUG, logger="dataplane.providers.classify")
    error = classify_error(
        "openai",
        status=401,
        facts=ErrorFacts(tokens=(echo, "invalid_api_key"), message=f"Incorrect API key provided: {echo}"),
        body=json.dumps({"error": {"message": f"Incorrect API key provided: {echo}", "code": echo}}),
        credential=SECRET,
    )
    assert type(error) is UpstreamAuthFailed
    assert str(error) == "openai: upstream rejected the node's credential (HTTP 401)"
    assert error.body is not None
    assert "[REDACTED]" in error.body
    for where in (str(error), error.body, caplog.text):
        assert echo not in where
        assert SECRET[3:-4].lower() not in where.lower()
        assert SECRET[:16] not in where
        assert SECRET[-14:] not in where


@pytest.mark.parametrize(
    ("status", "tokens", "expected", "message"),
    [
        (429, ("rate_limit_exceeded",), RateLimited, "p: upstream rate limited the request (HTTP 429)"),
        (
            400,
            ("invalid_request_error",),
            UpstreamBadRequest,
            "p: upstream rejected the request as invalid (HTTP 400)",
        ),
        (503, (), Overloaded, "p: upstream is overloaded (HTTP 503)"),
        (500, ("LEAK-code",), UpstreamUnavailable, "p: upstream failed (HTTP 500)"),
        (None, ("LEAK-code",), UpstreamUnavailable, "p: upstream failed (in-band error)"),
        (
            404,
            ("LEAK-code",),
            UpstreamModelNotFound,
            "p: upstream does not serve the deployment's model (HTTP 404)",
        ),
    ],
)
def test_caller_messages_are_fixed_per_kind(
    status: int | None, tokens: tuple[str, ...], expected: type[ProviderError], message: str
) -> None:
    error = classify_error(
        "p",
        status=status,
        facts=ErrorFacts(tokens=tokens, message="LEAK-prose"),
        body='{"LEAK": "body"}',
        credential=None,
    )
    assert type(error) is expected
    assert error.message == message
    assert "LEAK" not in error.message
    assert error.body == '{"LEAK": "body"}'  # kept for operators


@pytest.mark.parametrize(
    ("status", "tokens", "prose"),
    [
        (404, (), ""),
        (404, ("not_found_error",), "model: claude-nope"),  # Anthropic
        (404, ("NOT_FOUND", "404"), "models/gemini-nope is not found"),  # Gemini
        (400, ("model_not_found",), ""),  # OpenAI on some gateways
        (400, ("invalid_model", "1500"), "Invalid model: mistral-nope"),  # Mistral
        (400, (), "The model `llama-nope` does not exist."),  # vLLM and compatible servers
        (None, ("model_not_found",), ""),  # in-band
    ],
)
def test_an_unknown_model_is_the_deployments_failure(
    status: int | None, tokens: tuple[str, ...], prose: str
) -> None:
    error = classify_error(
        "p", status=status, facts=ErrorFacts(tokens=tokens, message=prose), credential=None
    )
    assert type(error) is UpstreamModelNotFound
    assert error.kind == "model_not_found"
    assert error.status is grpc.StatusCode.UNAVAILABLE
    assert not error.retryable


def test_model_not_found_falls_back_by_default_and_may_be_named_in_a_policy() -> None:
    assert "model_not_found" in DEFAULT_FALLBACK_ON
    assert "model_not_found" in FALLBACK_KINDS
    schema = json.loads(resources.files("dataplane.policy").joinpath("policy.schema.json").read_text())
    assert "model_not_found" in schema["$defs"]["error_kind"]["enum"]


def test_operator_detail_is_bounded_and_free_of_control_characters() -> None:
    hostile = "\x1b[31mred\x1b[0m\r\nforged log line\u202e" + "x" * 100_000
    detail = operator_detail(hostile, None)
    assert len(detail) < DETAIL_LIMIT + 64
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in detail)
    assert "\u202e" not in detail
    assert detail.startswith("[31mred[0mforged log line")
    assert detail.endswith(f"({len(hostile)} characters in all)")


def test_redaction_leaves_other_text_alone() -> None:
    text = "request sk-other-key-xyz9 failed; see https://example.com/docs"
    assert redact_credential(text, SECRET) == text
    assert redact_credential(text, None) == text
    assert redact_credential(text, "") == text


def test_protocol_errors_keep_the_upstreams_words_for_operators_only() -> None:
    error = protocol_error("p", "invalid JSON", f"garbage {SECRET.upper()}", credential=SECRET)
    assert error.message == "p: upstream sent malformed output (invalid JSON)"
    assert error.body == "garbage [REDACTED]"
