"""Every provider failure becomes one ``dataplane.errors.ProviderError`` here, from tables.

Adapters only *read* their provider's error body into ``ErrorFacts`` (the
type/code/status/reason tokens it names); the decision which error class that
is happens in this module, once, for every provider:

1. ``_TOKEN_TABLE``: a provider token such as ``insufficient_quota`` or
   ``overloaded_error`` decides first, because the HTTP status alone is
   ambiguous (OpenAI uses 429 for both rate limits and an empty wallet,
   Gemini reports a bad API key as 400).
2. ``_CONTEXT_PATTERN`` and ``_MODEL_PATTERN``: providers without a
   context-length or unknown-model code say so in prose; only
   bad-request-shaped errors are searched.
3. ``_STATUS_TABLE`` and the 4xx/5xx ranges (404 is the deployment's unknown
   model, not the caller's mistake).
4. Errors without a status (mid-stream error events) default to
   ``UpstreamUnavailable``: the provider failed after accepting the request,
   which retry logic treats like a 503.

Transport failures (``dataplane.upstream.errors``) go through ``_TRANSPORT_TABLE``.

Provider responses are untrusted input. The message a caller (and the
evidence record) sees is always one of OUR fixed sentences per failure kind,
with the provider's type name and the HTTP status: never a token, message or
body the provider sent, so an upstream that echoes the node's credential
(plainly, masked, upper-cased, base64-encoded, ...) cannot get it to a caller.
What the provider said is kept for operators only, in ``ProviderError.body``
and one WARNING log line per error, after ``operator_detail``: control and
invisible characters removed, every form of the credential that
``redact_credential`` knows redacted (exact in any letter case, base64 and
base64url at every byte alignment, any ``sk-ab...wxyz``-style mask made
of its first three and last four characters, any token holding its first or
last 12), then cut to 512 characters.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from dataplane.errors import (
    ContentFiltered,
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
from dataplane.upstream.errors import (
    ConnectError,
    DecodingError,
    HTTPError,
    NetworkError,
    RemoteProtocolError,
    TimeoutException,
)

_log = logging.getLogger(__name__)

DETAIL_LIMIT = 512
"""Characters of an upstream's own words kept for operators (``ProviderError.body``, logs)."""
_DETAIL_SCAN = 8192
"""Characters of a body looked at for the detail: more than any credential, far more than kept."""
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
        frozenset({"model_not_found", "not_found_error", "not_found", "notfounderror", "invalid_model"}),
        UpstreamModelNotFound,
    ),
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

_MODEL_PATTERN = re.compile(
    r"\bmodel\b.{0,200}?\b(not found|does not exist)\b|\b(invalid|unknown) model\b",
    re.IGNORECASE,
)

_STATUS_TABLE: Mapping[int, type[ProviderError]] = {
    401: UpstreamAuthFailed,
    # Payment Required: the node's account with the provider is out of credit (DeepSeek's
    # "Insufficient Balance", OpenRouter's "insufficient credits"), never the caller's request.
    402: QuotaExhausted,
    403: UpstreamAuthFailed,
    404: UpstreamModelNotFound,
    408: UpstreamTimeout,
    429: RateLimited,
    503: Overloaded,
    504: UpstreamTimeout,
    529: Overloaded,
}

_SUMMARY: Mapping[type[ProviderError], str] = {
    QuotaExhausted: "upstream quota is exhausted",
    UpstreamAuthFailed: "upstream rejected the node's credential",
    ContextTooLong: "input exceeds the model's context window",
    ContentFiltered: "upstream filtered the content",
    RateLimited: "upstream rate limited the request",
    Overloaded: "upstream is overloaded",
    UpstreamTimeout: "upstream timed out",
    UpstreamUnavailable: "upstream failed",
    UpstreamBadRequest: "upstream rejected the request as invalid",
    UpstreamModelNotFound: "upstream does not serve the deployment's model",
    UpstreamProtocolError: "upstream sent malformed output",
}
"""The only words a caller sees for an upstream error, with the provider type and HTTP status."""

# Most specific first: every timeout is a TransportError too.
_TRANSPORT_TABLE: tuple[tuple[type[Exception], type[ProviderError], str], ...] = (
    (TimeoutException, UpstreamTimeout, "timed out"),
    (ConnectError, UpstreamUnavailable, "could not be reached"),
    (RemoteProtocolError, UpstreamProtocolError, "sent a malformed or incomplete HTTP answer"),
    (DecodingError, UpstreamProtocolError, "sent an undecodable body"),
    (NetworkError, UpstreamUnavailable, "connection failed"),
    (HTTPError, UpstreamUnavailable, "transport failed"),
    (TimeoutError, UpstreamTimeout, "timed out"),
)


def classify_error(
    provider: str,
    *,
    status: int | None,
    facts: ErrorFacts,
    body: str | None = None,
    headers: Mapping[str, str] | None = None,
    credential: str | None,
) -> ProviderError:
    """Turn one provider error (HTTP error response or in-band error event) into a ``ProviderError``.

    The message is ours alone (see the module docstring); the provider's
    tokens and body go, sanitized, to ``.body`` and the log. ``credential``
    (the node's, for this provider; None when it has none) is required so no
    caller can forget what to redact.
    """
    cls = _classify(status, facts)
    where = f"HTTP {status}" if status is not None else "in-band error"
    retry_after = parse_retry_after(headers) if headers is not None else None
    if retry_after is None:
        retry_after = facts.retry_after
    said = body if body is not None else " ".join((*facts.tokens, facts.message))
    detail = operator_detail(said, credential)
    _log.warning(
        "%s: upstream error (%s) classified as %s; upstream said: %s", provider, where, cls.kind, detail
    )
    return cls(
        f"{provider}: {_SUMMARY.get(cls, 'upstream failed')} ({where})",
        provider=provider,
        http_status=status,
        retry_after=retry_after,
        body=detail,
    )


def classify_transport(provider: str, exc: Exception, *, credential: str | None) -> ProviderError:
    """Turn an upstream transport (or deadline) exception into a ``ProviderError``; the caller chains it.

    How the answer broke HTTP or its coding (which rule, which coding) goes to the operator's
    log, sanitized as every upstream's words are (a coding's name is the upstream's text):
    the caller's message names only the class."""
    for exc_type, cls, what in _TRANSPORT_TABLE:
        if isinstance(exc, exc_type):
            if isinstance(exc, RemoteProtocolError | DecodingError):
                detail = operator_detail(str(exc), credential)
                _log.warning("%s: upstream %s: %s", provider, what, detail)
            # The exception's own text may carry the URL; only its class name is shown.
            return cls(f"{provider}: upstream {what} ({type(exc).__name__})", provider=provider)
    return UpstreamUnavailable(f"{provider}: upstream call failed ({type(exc).__name__})", provider=provider)


def protocol_error(
    provider: str, problem: str, body: str | None = None, *, credential: str | None
) -> UpstreamProtocolError:
    """The upstream answered, but not in its documented format.

    ``problem`` is our own words (it reaches the caller); what the upstream
    sent goes only to ``.body`` and the log, sanitized like every error's.
    """
    detail = operator_detail(body, credential) if body is not None else None
    if detail is not None:
        _log.warning("%s: upstream sent malformed output (%s); it sent: %s", provider, problem, detail)
    return UpstreamProtocolError(
        f"{provider}: upstream sent malformed output ({problem})", provider=provider, body=detail
    )


_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def operator_detail(text: str, credential: str | None) -> str:
    """An upstream's words made fit for an operator's log: invisible characters dropped first
    (so none can split a credential), the credential redacted, then cut to ``DETAIL_LIMIT``."""
    clean = _INVISIBLE.sub("", text[:_DETAIL_SCAN])
    clean = redact_credential(clean, credential)
    if len(clean) > DETAIL_LIMIT:
        clean = clean[:DETAIL_LIMIT] + f"... ({len(text)} characters in all)"
    return clean


def redact_credential(text: str, credential: str | None) -> str:
    """``text`` with every form of ``credential`` we know replaced by ``[REDACTED]``.

    The forms: the exact text in any letter case; its base64 and base64url
    encodings (with or without padding) at each of the three byte alignments,
    so it is found also inside a longer encoded string such as
    ``base64("Bearer " + key)``; and, for credentials of 12 characters or
    more, any run of up to 96 non-blank characters that starts with its first
    three and ends with its last four characters (``sk-Ab...wxyz``,
    ``sk-Ab****wxyz``), whatever the case; for credentials of 24 characters or
    more, any token holding their first or last 12 characters (a cut-off echo).
    """
    if not credential:
        return text
    for form in _encoded_forms(credential):
        text = text.replace(form, _REDACTED)
    text = re.sub(re.escape(credential), _REDACTED, text, flags=re.IGNORECASE)
    if len(credential) >= 12:
        masked = re.escape(credential[:3]) + r"[^\s\"'<>]{0,96}?" + re.escape(credential[-4:])
        text = re.sub(masked, _REDACTED, text, flags=re.IGNORECASE)
    if len(credential) >= 24:
        # A truncated echo: a token carrying its first or last 12 characters.
        head = re.escape(credential[:12]) + r"[^\s\"'<>]*"
        tail = r"[^\s\"'<>]*" + re.escape(credential[-12:])
        text = re.sub(f"{head}|{tail}", _REDACTED, text, flags=re.IGNORECASE)
    return text


def _encoded_forms(credential: str) -> list[str]:
    raw = credential.encode()
    forms: set[str] = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode("ascii")
        # Only the characters made of the credential's bits alone, whatever surrounds it.
        core = encoded[-(-8 * shift // 6) : 8 * (shift + len(raw)) // 6]
        if len(core) >= 8:
            forms.update((core, core.replace("+", "-").replace("/", "_")))
    return sorted(forms, key=len, reverse=True)


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
        return max(when.timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, ArithmeticError):
        # ArithmeticError: a year, second or UTC offset beyond a C integer ("Mon, 01 Jan
        # 99999999999999999999 00:00:00 GMT") raises OverflowError; no date, no delay.
        return None


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


def text_of(value: object) -> str:
    """An error body's message, read only when it is the string it is documented to be: ``str()``
    of anything else is a Python repr (of a list nested past the recursion limit, RecursionError)."""
    return value if isinstance(value, str) else ""


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
    if status in (400, 422) and _MODEL_PATTERN.search(facts.message):
        return UpstreamModelNotFound
    if status is None:
        return UpstreamUnavailable
    if status in _STATUS_TABLE:
        return _STATUS_TABLE[status]
    if status >= 500:
        return UpstreamUnavailable
    return UpstreamBadRequest
