"""Every provider failure becomes one ``dataplane.errors.ProviderError`` here, from tables.

Adapters only *read* their provider's error body into ``ErrorFacts`` (the
type/code/status/reason tokens it names); the decision which error class that
is happens in this module, once, for every provider:

1. ``_TOKEN_TABLE``: a provider token such as ``insufficient_quota`` or
   ``overloaded_error`` decides first, because the HTTP status alone is
   ambiguous (OpenAI uses 429 for both rate limits and an empty wallet,
   Gemini reports a bad API key as 400).
2. ``_CONTEXT_PATTERN``: providers without a context-length code say so in
   prose; only bad-request-shaped errors are searched.
3. ``_STATUS_TABLE`` and the 4xx/5xx ranges.
4. Errors without a status (mid-stream error events) default to
   ``UpstreamUnavailable``: the provider failed after accepting the request,
   which retry logic treats like a 503.

Transport failures (``httpx`` exceptions) go through ``_TRANSPORT_TABLE``.

The message a caller sees names the provider, the HTTP status and the
provider's error code, never the raw body (kept in ``.body`` for debugging)
and never the credential (redacted from both).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from dataplane.errors import (
    ContentFiltered,
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

_MAX_BODY = 16_384
_REDACTED = "[REDACTED]"


@dataclass(frozen=True, slots=True)
class ErrorFacts:
    """What a provider's error body says, before classification."""

    tokens: tuple[str, ...] = ()
    """Machine-readable names from the body: error type, code, status, reason."""
    message: str = ""
    """The provider's human-readable message; searched for context-length prose, never shown."""
    retry_after: float | None = None
    """A retry delay given inside the body (Gemini ``RetryInfo``), if any."""


# Checked in order; the first row with a matching token wins.
_TOKEN_TABLE: tuple[tuple[frozenset[str], type[ProviderError]], ...] = (
    (frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"}), QuotaExhausted),
    (
        frozenset(
            {
                "invalid_api_key",
                "authentication_error",
                "permission_error",
                "unauthenticated",
                "permission_denied",
                "api_key_invalid",
                "invalid_authentication",
            }
        ),
        UpstreamAuthFailed,
    ),
    (frozenset({"context_length_exceeded", "model_context_window_exceeded"}), ContextTooLong),
    (
        frozenset({"content_filter", "content_policy_violation", "responsibleaipolicyviolation"}),
        ContentFiltered,
    ),
    (
        frozenset({"rate_limit_exceeded", "rate_limit_error", "rate_limited", "resource_exhausted"}),
        RateLimited,
    ),
    (frozenset({"overloaded_error", "overloaded", "unavailable"}), Overloaded),
    (frozenset({"timeout", "deadline_exceeded", "timeout_error"}), UpstreamTimeout),
    (frozenset({"api_error", "server_error", "internal", "internal_error"}), UpstreamUnavailable),
)

_CONTEXT_PATTERN = re.compile(
    r"context[ _-]?(length|window)|prompt is too long|maximum context|too many tokens"
    r"|input token count .* exceeds|exceeds the maximum number of tokens|too large for model",
    re.IGNORECASE,
)

_STATUS_TABLE: Mapping[int, type[ProviderError]] = {
    401: UpstreamAuthFailed,
    403: UpstreamAuthFailed,
    408: UpstreamTimeout,
    429: RateLimited,
    503: Overloaded,
    504: UpstreamTimeout,
    529: Overloaded,
}

_SUMMARY: Mapping[type[ProviderError], str] = {
    QuotaExhausted: "quota exhausted",
    UpstreamAuthFailed: "rejected the node's credential",
    ContextTooLong: "input exceeds the model's context window",
    ContentFiltered: "content filtered",
    RateLimited: "rate limited",
    Overloaded: "overloaded",
    UpstreamTimeout: "timed out",
    UpstreamUnavailable: "server error",
    UpstreamBadRequest: "rejected the request",
    UpstreamProtocolError: "sent malformed output",
}

# Most specific first: every httpx timeout is a TransportError too.
_TRANSPORT_TABLE: tuple[tuple[type[Exception], type[ProviderError], str], ...] = (
    (httpx.TimeoutException, UpstreamTimeout, "timed out"),
    (httpx.ConnectError, UpstreamUnavailable, "could not be reached"),
    (httpx.RemoteProtocolError, UpstreamProtocolError, "closed the connection mid-response"),
    (httpx.DecodingError, UpstreamProtocolError, "sent an undecodable body"),
    (httpx.NetworkError, UpstreamUnavailable, "connection failed"),
    (httpx.HTTPError, UpstreamUnavailable, "transport failed"),
    (TimeoutError, UpstreamTimeout, "timed out"),
)


def classify_error(
    provider: str,
    *,
    status: int | None,
    facts: ErrorFacts,
    body: str | None = None,
    headers: Mapping[str, str] | None = None,
    credential: str | None = None,
) -> ProviderError:
    """Turn one provider error (HTTP error response or in-band error event) into a ``ProviderError``."""
    cls = _classify(status, facts)
    code = next((t for t in facts.tokens if t), "")
    where = f"HTTP {status}" if status is not None else "in-band error"
    detail = f"{where}, {code}" if code else where
    retry_after = parse_retry_after(headers) if headers is not None else None
    if retry_after is None:
        retry_after = facts.retry_after
    message = _redact(f"{provider}: upstream {_SUMMARY.get(cls, 'failed')} ({detail})", credential)
    return cls(
        message,
        provider=provider,
        http_status=status,
        retry_after=retry_after,
        body=_redact(body[:_MAX_BODY], credential) if body is not None else None,
    )


def classify_transport(provider: str, exc: Exception) -> ProviderError:
    """Turn an ``httpx`` (or deadline) exception into a ``ProviderError``; the caller chains it."""
    for exc_type, cls, what in _TRANSPORT_TABLE:
        if isinstance(exc, exc_type):
            # The exception's own text may carry the URL; only its class name is shown.
            return cls(f"{provider}: upstream {what} ({type(exc).__name__})", provider=provider)
    return UpstreamUnavailable(f"{provider}: upstream call failed ({type(exc).__name__})", provider=provider)


def protocol_error(provider: str, problem: str, body: str | None = None) -> UpstreamProtocolError:
    """The upstream answered, but not in its documented format."""
    return UpstreamProtocolError(
        f"{provider}: upstream sent malformed output ({problem})",
        provider=provider,
        body=body[:_MAX_BODY] if body is not None else None,
    )


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date.

    Untrusted: a value that is not a finite number is ignored. How long a node
    honours it is capped where it is recorded (``DeploymentState.block_for``).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        seconds = _seconds(millis)
        if seconds is not None:
            return seconds / 1000.0
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def parse_duration(value: object) -> float | None:
    """A protobuf JSON duration such as ``"30s"`` or ``"1.5s"``, in seconds (finite, >= 0)."""
    if isinstance(value, str) and value.endswith("s"):
        return _seconds(value[:-1])
    return None


def _seconds(text: str) -> float | None:
    """A finite number, clamped at 0; ``None`` for anything else ("inf", "nan", words)."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def tokens_of(*values: object) -> tuple[str, ...]:
    """The non-empty string forms of ``values``; ints (numeric codes) are kept as text."""
    return tuple(str(v) for v in values if isinstance(v, str | int) and not isinstance(v, bool) and v != "")


def _classify(status: int | None, facts: ErrorFacts) -> type[ProviderError]:
    lowered = {t.lower() for t in facts.tokens}
    for names, cls in _TOKEN_TABLE:
        if lowered & names:
            return cls
    bad_request_shaped = status is None or status in (400, 413, 422)
    if bad_request_shaped and _CONTEXT_PATTERN.search(facts.message):
        return ContextTooLong
    if status is None:
        return UpstreamUnavailable
    if status in _STATUS_TABLE:
        return _STATUS_TABLE[status]
    if status >= 500:
        return UpstreamUnavailable
    return UpstreamBadRequest


def _redact(text: str, credential: str | None) -> str:
    if credential:
        return text.replace(credential, _REDACTED)
    return text
