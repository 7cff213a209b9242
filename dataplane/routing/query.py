"""What routing is asked (``RouteQuery``) and what it answers (``RoutePlan``).

``query_for`` is the one place a request becomes a query: the node's pipeline
and the control plane's ExplainRoute both call it, so they count the same
capabilities and estimate the same tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from dataplane.chat import ChatRequest, EmbedRequest, ImagePart
from dataplane.config.model import (
    DEFAULT_RETRY,
    Capability,
    DataClass,
    DeploymentMode,
    RetrySettings,
    TenantConfig,
)
from dataplane.routing.candidate import Candidate

AUTO_MODEL = "auto"
"""A request's model ``auto`` (or empty), through either door: the tenant's policy chooses.
No model may have it as its alias (the control plane refuses it)."""


@dataclass(slots=True)  # not frozen: made per request (see dataplane.pipeline.call)
class Hints:
    """What a caller says about a request besides its content: it steers routing,
    it is never sent to a model."""

    model: str = ""
    """Explicit model alias, or empty to let the policy choose (``AUTO_MODEL`` is read as empty)."""
    task: str = ""
    data_classification: DataClass = DataClass.UNSPECIFIED
    metadata: Mapping[str, str] = field(default_factory=dict)
    capabilities: frozenset[Capability] = frozenset()
    """Capabilities the caller requires beyond what the content implies."""


@dataclass(slots=True)  # not frozen: made per request (see dataplane.pipeline.call)
class RouteQuery:
    """What routing needs to know about a request."""

    tenant: TenantConfig
    model: str = ""
    """Explicit model alias, or empty to let the policy choose."""
    capabilities: frozenset[Capability] = frozenset()
    task: str = ""
    data_classification: DataClass = DataClass.UNSPECIFIED
    metadata: Mapping[str, str] = field(default_factory=dict)
    estimated_input_tokens: int = 0
    max_output_tokens: int | None = None
    streaming: bool = False
    embeddings: bool = False
    region: str = ""
    """Where the request comes from or must stay; empty: the tenant's ``region`` label."""
    jurisdiction: str = ""
    """Empty: the tenant's ``jurisdiction`` label."""
    request_id: str = ""
    """The correlation id: spreads load over deployments, and draws split arms and
    shadow shares when the sticky key is absent from the request."""


@dataclass(slots=True)  # not frozen: made per request (see dataplane.pipeline.call)
class RoutePlan:
    policy_id: str
    policy_version: int
    rule: str
    strategy: str
    considered: tuple[str, ...]
    """Model aliases considered, in order."""
    dropped: tuple[tuple[str, str], ...]
    """(model alias, or ``alias@provider`` for one deployment; why it was dropped)."""
    ordered: tuple[Candidate, ...]
    """First is the choice, the rest are fallbacks in order."""
    reason: str
    shadow: Candidate | None = None
    retry: RetrySettings = DEFAULT_RETRY
    """How the dispatcher retries and falls back for this request."""
    arm: str = ""
    """The weighted split's arm for this request (empty for other strategies)."""
    deferred: tuple[tuple[str, str], ...] = ()
    """(``alias@provider``, why) for deployments moved to the back: breaker open, Retry-After."""

    @property
    def chosen(self) -> Candidate:
        return self.ordered[0]

    @property
    def fallbacks(self) -> tuple[Candidate, ...]:
        return self.ordered[1:]

    def explain(self) -> dict[str, Any]:
        """The decision as plain data, for ExplainRoute and evidence records."""
        return {
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
            "rule": self.rule,
            "strategy": self.strategy,
            "reason": self.reason,
            "arm": self.arm,
            "considered": list(self.considered),
            "dropped": [{"candidate": c, "why": why} for c, why in self.dropped],
            "deferred": [{"candidate": c, "why": why} for c, why in self.deferred],
            "chosen": _describe(self.ordered[0]) if self.ordered else None,
            "fallbacks": [_describe(c) for c in self.ordered[1:]],
            "shadow": _describe(self.shadow) if self.shadow is not None else None,
            "retry": {
                "max_attempts": self.retry.max_attempts,
                "attempts_per_deployment": self.retry.attempts_per_deployment,
                "backoff_base_ms": self.retry.backoff_base_ms,
                "backoff_cap_ms": self.retry.backoff_cap_ms,
                "fallback_on": sorted(self.retry.fallback_on),
                "hedge": (
                    {"after_ms": self.retry.hedge_after_ms, "max_extra": self.retry.hedge_max_extra}
                    if self.retry.hedge_max_extra
                    else None
                ),
            },
        }


def _describe(c: Candidate) -> dict[str, str]:
    return {
        "model": c.model.alias,
        "deployment": c.key,
        "provider": c.provider.name or c.provider.id,
        "upstream_model": c.deployment.upstream_model,
    }


@dataclass(frozen=True, slots=True)
class NodeContext:
    """Where the node runs: constrains dispatch like a policy does."""

    mode: DeploymentMode = DeploymentMode.CLOUD
    site: str = ""
    """The node's site: an air-gapped node only calls providers of this site."""
    deployment: str = ""
    """The deployment the node belongs to (its snapshot scope)."""
    node_group: str = ""
    """The node group (its snapshot scope)."""


CLOUD_NODE = NodeContext()
"""A cloud node outside any site: the default context."""


IMAGE_TOKENS = 1_600
"""What one image may cost as input: the most the common providers count for one (Anthropic's
~1,600 for a full-size image; OpenAI's high detail ~1,100 at 2048 px)."""


def estimate_tokens(chat: ChatRequest) -> int:
    """A rough input size (about four characters per token, ``IMAGE_TOKENS`` per image):
    what routing checks against context windows and what the limit step reserves before the
    provider's count is known (``pipeline.plans.worst_case``). Everything the provider counts
    as input is in it: message text, tool calls and their arguments, images, the tools'
    definitions and the response schema; text alone let a request with large tool schemas or
    many images reserve a fraction of what it then cost, so concurrent ones passed a budget."""
    chars = images = 0
    for message in chat.messages:
        chars += len(message.text)
        for call in message.tool_calls:
            chars += len(call.name) + len(call.arguments)
        images += sum(1 for part in message.content if type(part) is ImagePart)
    if chat.tools:
        for tool in chat.tools:
            chars += len(tool.name) + len(tool.description) + _json_chars(tool.parameters)
    if chat.response_format is not None and chat.response_format.schema is not None:
        chars += _json_chars(chat.response_format.schema) + len(chat.response_format.description)
    return chars // 4 + images * IMAGE_TOKENS


def _json_chars(value: object) -> int:
    try:
        return len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):  # not JSON the provider would get either
        return 0


def capabilities_needed(
    chat: ChatRequest, required: frozenset[Capability] = frozenset()
) -> frozenset[Capability]:
    """What a chat request needs from a model: chat itself, the caller's list, and what its
    content implies. Without ``CHAT`` a chat was routed to an embeddings-only model (one the
    caller named, or a rule listed): its provider refuses it (OpenAI: 404, "not a chat
    model"), which the deployment's circuit breaker counts, so one tenant's chats could
    open the breaker its embeddings callers share."""
    needed = set(required)
    needed.add(Capability.CHAT)
    if chat.tools:
        needed.add(Capability.TOOLS)
    if chat.response_format is not None:
        if chat.response_format.type == "json_object":
            needed.add(Capability.JSON_MODE)
        elif chat.response_format.type == "json_schema":
            needed.add(Capability.JSON_SCHEMA)
    if any(isinstance(part, ImagePart) for m in chat.messages for part in m.content):
        needed.add(Capability.VISION)
    return frozenset(needed)


def query_for(
    tenant: TenantConfig,
    body: ChatRequest | EmbedRequest,
    hints: Hints,
    *,
    streaming: bool = False,
    request_id: str = "",
) -> RouteQuery:
    """The routing query of one request: the only place a request's needs are derived."""
    if isinstance(body, EmbedRequest):
        return RouteQuery(
            tenant=tenant,
            model=hints.model,
            capabilities=_EMBEDDINGS,
            task=hints.task,
            data_classification=hints.data_classification,
            metadata=hints.metadata,
            estimated_input_tokens=sum(len(t) for t in body.inputs) // 4,
            embeddings=True,
            request_id=request_id,
        )
    needed = capabilities_needed(body, hints.capabilities)
    if streaming:
        # A model the registry says cannot stream is not sent a stream: its provider
        # refuses one, or answers it whole where a stream of events was expected.
        needed |= _STREAMING
    return RouteQuery(
        tenant=tenant,
        model=hints.model,
        capabilities=needed,
        task=hints.task,
        data_classification=hints.data_classification,
        metadata=hints.metadata,
        estimated_input_tokens=estimate_tokens(body),
        max_output_tokens=body.params.max_output_tokens,
        streaming=streaming,
        request_id=request_id,
    )


_EMBEDDINGS = frozenset({Capability.EMBEDDINGS})
_STREAMING = frozenset({Capability.STREAMING})


def sticky_value(key: str, query: RouteQuery) -> str:
    """The request's value for a sticky key; the request id when the request lacks it."""
    value: str | None = None
    if key.startswith("metadata."):
        value = query.metadata.get(key[9:])
    elif key.startswith("tenant.labels."):
        value = query.tenant.labels.get(key[14:])
    elif key == "tenant.id":
        value = query.tenant.id
    return value if value else query.request_id


def stable_fraction(key: str) -> float:
    """A number in [0, 1) from ``key`` that is the same on every node and every run."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 18446744073709551616.0
