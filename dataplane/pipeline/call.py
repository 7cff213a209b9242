"""What a front door hands the pipeline, and what it gets back.

Plain values only: a front door converts its wire format to a ``Call`` at its
edge, and converts a ``Served`` (or the stream's ``Opened`` / chunks / ``Closed``)
or a ``Refused`` back to its own format.

Per-request values are slotted dataclasses but not frozen: a frozen one sets each field
through ``object.__setattr__`` (several times the cost of a plain assignment, on every
request); they are still never changed once made (``dataclasses.replace`` makes a new one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from dataplane.accounting import Cost
from dataplane.chat import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    FinishReason,
    StreamChunk,
    Usage,
)
from dataplane.config.model import DataClass, RuntimeConfig, TenantConfig
from dataplane.outcome import Outcome
from dataplane.routing.candidate import Candidate
from dataplane.routing.dispatch import AttemptRecord
from dataplane.routing.query import Hints, RoutePlan

Body = TypeVar("Body", ChatRequest, EmbedRequest)
Result = TypeVar("Result", ChatResponse, EmbedResponse)


class Operation(StrEnum):
    """What a caller asks for; also what a key's ``op:`` scope names."""

    CHAT = "chat"
    """One answer (unary)."""
    STREAM = "stream"
    """One answer, streamed as it is generated."""
    EMBED = "embed"
    """Embedding vectors."""


EVIDENCE_KIND = {Operation.CHAT: "infer", Operation.STREAM: "stream", Operation.EMBED: "embed"}
"""The ``kind`` an operation's evidence records carry."""


@dataclass(slots=True)
class Call(Generic[Body]):
    """One request as a front door hands it over."""

    operation: Operation
    decode: Callable[[], tuple[Body, Hints]]
    """Turns the wire request into the plain request and its routing hints; raises
    ``InvalidRequest`` naming the field. Called after the caller is authenticated,
    so an anonymous caller learns nothing about its request's shape."""
    api_key: str | None
    """The caller's credential (the bearer token), None when absent."""
    correlation_id: str = ""
    """As the caller supplied it ("" for none): checked, else one is generated."""
    correlation_field: str = "correlation_id"
    """Where the caller supplied it, to name in an error."""
    request_sha256: str = ""
    """Digest of the request exactly as received."""
    timeout: float | None = None
    """Seconds the caller allows; None: the node's default."""
    peer_certificate: bytes | None = None
    """The TLS client certificate (PEM) the transport verified, None without one: the
    caller's identity when it sends no bearer token."""
    peer_refusal: str | None = None
    """Why the connection is not trusted, where the node requires a client certificate
    (none, or one its client CA did not sign): the call is refused with this message."""
    header: Callable[[str], str] | None = None
    """A request header (gRPC metadata) by lower-case name, "" when absent: read only when the
    request is traced (the caller's ``traceparent`` and ``tracestate``)."""


@dataclass(slots=True)
class Served(Generic[Result]):
    """A served request, with what every front door reports besides the answer."""

    result: Result
    plan: RoutePlan
    candidate: Candidate
    attempts: list[AttemptRecord]
    cost: Cost
    correlation_id: str
    snapshot_version: int
    evidence_id: str


@dataclass(slots=True)
class Opened:
    """A stream's first event: the answer is coming from ``candidate``."""

    correlation_id: str
    candidate: Candidate
    evidence_id: str = ""
    """The id the stream's evidence record will have (written when it ends)."""


@dataclass(slots=True)
class Closed:
    """A stream's last event, sent after its evidence is written."""

    finish_reason: FinishReason | None
    usage: Usage | None
    cost: Cost
    plan: RoutePlan
    candidate: Candidate
    attempts: list[AttemptRecord]
    correlation_id: str
    snapshot_version: int
    evidence_id: str


StreamEvent = Opened | StreamChunk | Closed


class Refused(Exception):
    """The request ends without an answer; its evidence is written already."""

    def __init__(self, outcome: Outcome, correlation_id: str, evidence_id: str = "") -> None:
        super().__init__(outcome.message)
        self.outcome = outcome
        self.correlation_id = correlation_id
        self.evidence_id = evidence_id


class GovernanceStep(Protocol):
    """Governance before and after the model (``dataplane.governance.enforce.Governance``).

    ``begin`` is asked once per request, with the snapshot the request runs on and the
    caller's tenant, for what governs this request; None (no profile applies) costs the
    request nothing further.
    """

    def begin(self, config: RuntimeConfig, tenant: TenantConfig) -> RequestGovernance | None: ...


class RequestGovernance(Protocol):
    """Governance of one request. Each method returns what goes on (possibly changed) or
    raises a ``SignalboxError`` to refuse; what it did is appended to ``actions`` (the
    request's evidence)."""

    @property
    def data_class(self) -> DataClass:
        """The data class the request's content raised it to (UNSPECIFIED: none); routing
        then only considers models certified for it."""
        ...

    @property
    def classified_by(self) -> str:
        """The rule that raised the data class, named when no model is certified for it."""
        ...

    @property
    def fallback_on(self) -> frozenset[str]:
        """Attempt outcomes the dispatcher falls back on for this request beyond the
        policy's (an answer breaking its contract, when the profile says retry)."""
        ...

    def govern_input(
        self, body: ChatRequest | EmbedRequest, actions: list[dict[str, Any]]
    ) -> ChatRequest | EmbedRequest: ...

    def check_answer(
        self,
        request: ChatRequest,
        response: ChatResponse,
        model: str,
        actions: list[dict[str, Any]],
        *,
        streamed: bool = False,
    ) -> None:
        """Each candidate's answer, as the dispatcher gets it: raising a ``ProviderError``
        whose kind is in ``fallback_on`` tries the next candidate. A ``streamed`` answer is
        checked once it has been sent whole (raising then ends the stream with the error)."""
        ...

    def govern_output(self, response: ChatResponse, actions: list[dict[str, Any]]) -> ChatResponse:
        """The answer the caller gets."""
        ...

    def stream(self, actions: list[dict[str, Any]]) -> StreamGovernance:
        """The same for a streamed answer."""
        ...

    def conceal(self, text: str) -> str:
        """What of the caller's answer ``text`` may be kept in evidence."""
        ...


class StreamGovernance(Protocol):
    """Governance of one streamed answer; it may hold text back."""

    def feed(self, chunk: StreamChunk) -> StreamChunk:
        """What of ``chunk`` goes out now."""
        ...

    def finish(self) -> StreamChunk | None:
        """What it still holds once the upstream has ended."""
        ...
