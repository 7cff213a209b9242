"""Errors of the data plane, each knowing its gRPC status and whether a retry may help.

    SignalboxError
    ├── InvalidRequest            INVALID_ARGUMENT   (names the field)
    ├── Unauthenticated           UNAUTHENTICATED
    ├── PermissionDenied          PERMISSION_DENIED
    ├── NotFound                  NOT_FOUND
    ├── CapabilityUnavailable     FAILED_PRECONDITION (names the capability)
    ├── CredentialUnavailable     FAILED_PRECONDITION (names the secret reference, never the value)
    ├── NoSnapshot                UNAVAILABLE         (node never had a valid snapshot)
    ├── EvidenceUnavailable       UNAVAILABLE         (the evidence record cannot be written)
    ├── EvidenceSpoolFull         UNAVAILABLE         (the spool is over its bound and the
    │                                                  tenant's policy is refuse)
    ├── CheckUnavailable          UNAVAILABLE         (the node's schema checker failed; retry)
    ├── LimitExceeded             RESOURCE_EXHAUSTED  (names the rate limit or budget; retry_after)
    │   └── OverBudget            FAILED_PRECONDITION (the request's worst case is more than the
    │                                                  whole budget: no retry can help)
    ├── QuotaUnavailable          UNAVAILABLE         (no quota can be leased and the tenant
    │                                                  fails closed; retry_after)
    ├── EvidenceChainBroken       DATA_LOSS           (the log does not verify; names the first bad line)
    ├── NoEligibleCandidate       FAILED_PRECONDITION (every candidate dropped by a constraint;
    │                                                  carries the drops and their reasons)
    ├── DeadlineExceeded          DEADLINE_EXCEEDED
    ├── AllCandidatesFailed       UNAVAILABLE         (every candidate failed; when every attempt
    │                                                  failed the same way, that kind's status)
    └── ProviderError             one class per failure kind, see ``kind``
        ├── RateLimited           RESOURCE_EXHAUSTED  retryable, honours retry_after
        ├── QuotaExhausted        RESOURCE_EXHAUSTED
        ├── Overloaded            UNAVAILABLE         retryable
        ├── UpstreamTimeout       DEADLINE_EXCEEDED   retryable
        ├── UpstreamUnavailable   UNAVAILABLE         retryable (connect errors, 5xx)
        ├── UpstreamAuthFailed    UNAVAILABLE         (the node's credential is wrong)
        ├── UpstreamBadRequest    INVALID_ARGUMENT
        ├── UpstreamModelNotFound UNAVAILABLE         (the deployment names a model the upstream
        │                                              does not serve: falls back by default)
        ├── ContentFiltered       FAILED_PRECONDITION
        ├── ContextTooLong        OUT_OF_RANGE        (a larger-window model may fit)
        └── UpstreamProtocolError UNAVAILABLE         retryable (malformed upstream output)

Configuration that cannot be served (an admin's document, a snapshot, a file on
disk) is not a caller's fault; these reach admins and NACK reasons, not callers:

    SignalboxError
    └── ConfigError               INVALID_ARGUMENT
        ├── PolicyError           (names the JSON path in the policy document)
        ├── ProfileError          (names the JSON path in the governance profile document)
        ├── SnapshotInvalid       (names the path of the offending snapshot entry)
        ├── EnvelopeError         (the signed envelope is not acceptable; says why)
        ├── SnapshotCheckFailed   FAILED_PRECONDITION (``reason`` is what the node NACKs with)
        └── SnapshotFileInvalid   FAILED_PRECONDITION (a pinned/last-known-good file or the
                                                       high-water mark cannot be trusted)

signalbox.errors.Error
└── DispatchFailed                the dispatcher's carrier: the caller-facing error (one of the
                                  above) plus the attempts it made

The one place that turns these into a status and message is ``dataplane.outcome``.
"""

from __future__ import annotations

from typing import ClassVar, Generic, TypeVar

import grpc

from signalbox.errors import Error

A = TypeVar("A")


class SignalboxError(Error):
    """Base of every error the data plane reports to a caller."""


class InvalidRequest(SignalboxError):
    status = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class Unauthenticated(SignalboxError):
    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(SignalboxError):
    status = grpc.StatusCode.PERMISSION_DENIED


class NotFound(SignalboxError):
    status = grpc.StatusCode.NOT_FOUND


class CapabilityUnavailable(SignalboxError):
    status = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, capability: str, message: str) -> None:
        super().__init__(message)
        self.capability = capability


class CredentialUnavailable(SignalboxError):
    """A provider's secret reference (env var or file) cannot be resolved on this node."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class NoSnapshot(SignalboxError):
    status = grpc.StatusCode.UNAVAILABLE


class EvidenceUnavailable(SignalboxError):
    """No answer goes out without its evidence record: the node fails the request instead."""

    status = grpc.StatusCode.UNAVAILABLE


class EvidenceSpoolFull(SignalboxError):
    """The node's unacknowledged evidence is over its bound and the tenant's policy is
    ``refuse`` (``dataplane.evidence.spool``); the refusal itself is recorded."""

    status = grpc.StatusCode.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("evidence spool full (tenant policy refuse)")


class CheckUnavailable(SignalboxError):
    """A check of the request could not run (the schema checker process died); not the
    caller's fault, and a retry may succeed."""

    status = grpc.StatusCode.UNAVAILABLE


class LimitExceeded(SignalboxError):
    """A rate limit or budget of the caller's tenant or key has no quota left for this
    request on this node (``dataplane.quota``). ``limit`` names it ("tenant acme requests
    per minute"); ``retry_after`` (seconds) goes to the caller as ``retry-after``."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    limit: str = ""
    retry_after: float | None = 1.0
    pending: bool = False
    """A budget the ledger has not reported used up, short only of a lease this node has not
    had yet: worth waiting for the lease rather than refusing (``Quotas.renewal``)."""

    def __init__(self, limit: str, retry_after: float, detail: str = "", *, pending: bool = False) -> None:
        super().__init__(f"{limit} exceeded" + (f" ({detail})" if detail else ""))
        self.limit = limit
        self.retry_after = retry_after
        self.pending = pending


class OverBudget(LimitExceeded):
    """A request's worst-case cost is more than the whole budget ``limit`` names: it can never
    be admitted, so it is not transient (no ``retry_after``); a smaller max tokens can be."""

    status = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, limit: str, worst_case: int, budget: int) -> None:
        SignalboxError.__init__(
            self,
            f"{limit}: the request's worst case ({worst_case} nano-USD) is more than the whole budget"
            f" ({budget} nano-USD); lower its max tokens",
        )
        self.limit = limit
        self.retry_after = None


class QuotaUnavailable(SignalboxError):
    """Quota cannot be leased (the control plane is unreachable) and the tenant fails closed."""

    status = grpc.StatusCode.UNAVAILABLE
    limit: str = ""
    retry_after: float = 1.0

    def __init__(self, limit: str, retry_after: float) -> None:
        super().__init__(
            f"{limit}: no quota can be leased (control plane unreachable) and the tenant fails closed"
        )
        self.limit = limit
        self.retry_after = retry_after


class EvidenceChainBroken(SignalboxError):
    """The evidence log does not verify; the message names the first bad line."""

    status = grpc.StatusCode.DATA_LOSS


class NoEligibleCandidate(SignalboxError):
    """The policy matched, but no candidate satisfies its constraints for this request."""

    status = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, dropped: tuple[tuple[str, str], ...]) -> None:
        super().__init__(message)
        self.dropped = dropped


class DispatchFailed(Error, Generic[A]):
    """The dispatcher gave up: the caller-facing ``error`` plus the attempts it made.

    Not a caller's error itself but a carrier (hence not a ``SignalboxError``):
    ``dataplane.outcome`` reports the wrapped error.
    """

    def __init__(
        self, error: Exception, attempts: list[A], skipped: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts
        self.skipped: list[tuple[str, str]] = skipped or []
        """(``alias@provider``, why) for candidates passed over without an attempt."""


class DeadlineExceeded(SignalboxError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class AllCandidatesFailed(SignalboxError):
    status = grpc.StatusCode.UNAVAILABLE


class ProviderError(SignalboxError):
    """A provider call failed. ``kind`` is the stable name used in evidence."""

    kind: ClassVar[str] = "provider_error"
    status = grpc.StatusCode.UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        http_status: int | None = None,
        retry_after: float | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.http_status = http_status
        self.retry_after = retry_after
        # Operators' detail of what the upstream said: already sanitized (bounded, control
        # characters stripped, the credential redacted in every form) by
        # ``dataplane.providers.classify.operator_detail``. Never sent to callers or evidence:
        # ``message`` is the only caller-facing text, and it is always our own.
        self.body = body


class RateLimited(ProviderError):
    kind = "rate_limited"
    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class QuotaExhausted(ProviderError):
    kind = "quota_exhausted"
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Overloaded(ProviderError):
    kind = "overloaded"
    status = grpc.StatusCode.UNAVAILABLE
    retryable = True


class UpstreamTimeout(ProviderError):
    kind = "timeout"
    status = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class UpstreamUnavailable(ProviderError):
    kind = "server_error"
    status = grpc.StatusCode.UNAVAILABLE
    retryable = True


class UpstreamAuthFailed(ProviderError):
    kind = "auth"
    status = grpc.StatusCode.UNAVAILABLE


class UpstreamBadRequest(ProviderError):
    kind = "bad_request"
    status = grpc.StatusCode.INVALID_ARGUMENT


class UpstreamModelNotFound(ProviderError):
    """The upstream does not know the deployment's model (HTTP 404, ``model_not_found``).

    A deployment failure, not the caller's: the model's other deployments may
    serve it, so ``model_not_found`` is a default fallback kind. Not retryable
    on the same deployment; UNAVAILABLE like ``UpstreamAuthFailed``, since only
    an admin's fix helps.
    """

    kind = "model_not_found"
    status = grpc.StatusCode.UNAVAILABLE


class ContentFiltered(ProviderError):
    kind = "content_filtered"
    status = grpc.StatusCode.FAILED_PRECONDITION


class ContextTooLong(ProviderError):
    kind = "context_too_long"
    status = grpc.StatusCode.OUT_OF_RANGE


class UpstreamProtocolError(ProviderError):
    kind = "protocol_error"
    status = grpc.StatusCode.UNAVAILABLE
    retryable = True


# ---- configuration that cannot be served


class ConfigError(SignalboxError):
    """Configuration (a document, a snapshot, a file) that cannot be served."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class PolicyError(ConfigError):
    """The document is invalid at ``path`` (a JSON path such as ``$.rules[0].weights``)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class ProfileError(ConfigError):
    """The governance profile document is invalid at ``path`` (a JSON path such as
    ``$.input.rules[0].options.terms``)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class SnapshotInvalid(ConfigError):
    """The payload cannot be served; ``path`` names the offending entry."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class EnvelopeError(ConfigError):
    """The envelope is not acceptable; the message says why."""


class SnapshotCheckFailed(ConfigError):
    """A snapshot failed a check; ``reason`` is what the node NACKs with."""

    status = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SnapshotFileInvalid(ConfigError):
    """A snapshot file (last-known-good or pin) or the high-water mark cannot be trusted."""

    status = grpc.StatusCode.FAILED_PRECONDITION


# ---- echoing what a caller sent


ECHO_CHARS = 64
"""How much of a caller-supplied value a message repeats."""


def shown(value: str, limit: int = ECHO_CHARS) -> str:
    """``value`` quoted for a message: at most ``limit`` characters, control characters
    escaped (``repr``), ``...`` when clipped. Every caller-supplied value a message
    repeats goes through here, so no message grows with the input."""
    if len(value) <= limit:
        return repr(value)
    return repr(value[:limit]) + "..."


MAX_MESSAGE_CHARS = 1024
"""The longest status message a caller is sent (gRPC carries it in a header)."""


def clipped(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to at most ``limit`` characters, saying so when it was cut."""
    if len(message) <= limit:
        return message
    marker = " ... (message clipped)"
    return message[: max(0, limit - len(marker))] + marker


E = TypeVar("E", bound=BaseException)


def fresh(error: E) -> E:
    """A copy of ``error`` to raise (its class, arguments and attributes; no traceback, cause
    or context), where ``error`` itself is kept by something the raising frame reaches.

    Raised itself, the kept error would take a traceback through that frame, whose locals
    reach the error again: a reference cycle, which keeps the frames' objects (the request's)
    until the cyclic collector runs, seldom in a serving worker (``dataplane.collector``).
    ``copy.copy`` would call the class with its ``args``, which classes with their own
    ``__init__`` (``InvalidRequest(field, problem)``) do not take."""
    copy = type(error).__new__(type(error), *error.args)
    copy.__dict__.update(error.__dict__)
    return copy
