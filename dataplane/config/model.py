"""The compiled, immutable configuration a node serves from.

Built from a verified snapshot payload in one place (``dataplane.snapshot.compile``)
and swapped atomically: a request reads one ``RuntimeConfig`` from start to end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Protocol

import grpc

from dataplane.config.identity import NO_IDENTITIES, IdentityIndex
from dataplane.scopes import UNRESTRICTED, KeyScope


class Capability(StrEnum):
    """Mirrors ``signalbox.api.common.v1.Capability``; the names policies use."""

    CHAT = "chat"
    TOOLS = "tools"
    VISION = "vision"
    JSON_MODE = "json_mode"
    JSON_SCHEMA = "json_schema"
    STREAMING = "streaming"
    EMBEDDINGS = "embeddings"


class DataClass(IntEnum):
    """Mirrors ``DataClassification``; ordered, so ``>=`` compares sensitivity."""

    UNSPECIFIED = 0
    PUBLIC = 1
    INTERNAL = 2
    CONFIDENTIAL = 3
    RESTRICTED = 4


DEFAULT_NODE_GROUP = "default"
"""The node group of a node that names none (the control plane's group for it)."""


class DeploymentMode(StrEnum):
    CLOUD = "cloud"
    ON_PREM = "on-prem"
    AIR_GAPPED = "air-gapped"


class ProviderLocation(StrEnum):
    PUBLIC_CLOUD = "public_cloud"
    ON_PREM = "on_prem"
    SITE = "site"


@dataclass(frozen=True, slots=True)
class SealedRef:
    """A credential sealed to a node group's key (``dataplane.providers.sealing``)."""

    node_group: str
    """The group it was sealed to."""
    key_id: str
    ciphertext: bytes = field(repr=False)
    provider_id: str
    """The provider it belongs to (bound in the associated data)."""
    snapshot_group: str
    """The node group of the snapshot that carries it: this node's own."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a credential lives on the node: an env var or a file, or the credential sealed
    to the node group's key. Never the value in clear."""

    env: str = ""
    file: str = ""
    sealed: SealedRef | None = None

    def __bool__(self) -> bool:
        return bool(self.env or self.file or self.sealed)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    id: str
    name: str
    type: str
    base_url: str
    credential: SecretRef = SecretRef()
    settings: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0
    location: ProviderLocation = ProviderLocation.PUBLIC_CLOUD
    site: str = ""
    region: str = ""
    jurisdiction: str = ""


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    id: str
    provider_id: str
    upstream_model: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class ModelConfig:
    id: str
    alias: str
    capabilities: frozenset[Capability]
    context_window: int = 0
    max_output_tokens: int = 0
    input_price_nanos_per_mtok: int = 0
    output_price_nanos_per_mtok: int = 0
    cached_input_price_nanos_per_mtok: int = 0
    deployments: tuple[DeploymentConfig, ...] = ()
    certified_for: frozenset[DataClass] = frozenset()
    certifications: frozenset[str] = frozenset()
    typical_latency_ms: int = 0
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Rate limits and budgets of a tenant or an API key (0: none of that kind); enforced
    with leased quota (``dataplane.quota``)."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    budget_day_nanos: int = 0
    budget_month_nanos: int = 0
    fail_closed: bool = False
    """A tenant's: refuse its limited requests while quota cannot be leased (else serve at
    the rate of the last leases)."""


@dataclass(frozen=True, slots=True)
class TenantConfig:
    id: str
    name: str
    tier: str = ""
    active: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    # ---- evidence settings (spool branch) ----
    evidence_full: bool = False
    """Records carry the request's messages and the answer's text (capped), not only digests."""
    spool_refuse: bool = False
    """Refuse new requests while the node's evidence spool is over its bound (else serve and alarm)."""
    # ---- limits (limits branch) ----
    limits: LimitsConfig | None = None
    """The tenant's own rate limits and budgets; None: none."""


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    id: str
    tenant_id: str
    name: str = ""
    scopes: frozenset[str] = frozenset()
    expires_at: float | None = None
    """Unix seconds, or None for no expiry."""
    scope: KeyScope = UNRESTRICTED
    """``scopes`` parsed once at compile (``KeyScope.parse``): what requests check."""
    limits: LimitsConfig | None = None
    """The key's own rate limits and budgets (the tenant's apply too); None: none."""


@dataclass(frozen=True, slots=True)
class Scope:
    deployment: str = ""
    node_group: str = ""
    site: str = ""


# ---------------------------------------------------------------------------
# Compiled routing policies (``dataplane.policy.compiler`` builds them from documents).


class Strategy(StrEnum):
    PRIORITY = "priority"
    """The listed order; later models are the fallbacks."""
    CHEAPEST = "cheapest"
    """Lowest estimated cost for this request first."""
    LATENCY = "latency"
    """Lowest observed latency (EWMA per deployment) first."""
    WEIGHTED = "weighted"
    """One arm chosen by a stable hash of the sticky key; the other arms follow."""


DEFAULT_FALLBACK_ON = frozenset(
    {
        "server_error",
        "rate_limited",
        "timeout",
        "overloaded",
        "protocol_error",
        "context_too_long",
        "model_not_found",
    }
)
"""Content filtering is opt-in: another model answering what one refused is a policy decision.
``model_not_found`` is a deployment's misconfiguration: the model's other deployments may serve."""


DEFAULT_OUTPUT_TOKENS = 1024
"""Output tokens assumed for cost estimates when neither request nor model gives a maximum."""


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How the dispatcher retries and falls back for requests routed by a rule."""

    max_attempts: int = 3
    """Attempts in total, over every candidate, for one request."""
    attempts_per_deployment: int = 2
    """Tries of one deployment at most. The candidates are each tried once first;
    a deployment is tried again (after a backoff) only once every other
    candidate has been tried, and only after a retryable error."""
    backoff_base_ms: int = 100
    """First backoff ceiling; doubles per retry, full jitter (uniform in [0, ceiling])."""
    backoff_cap_ms: int = 2000
    """Largest backoff ceiling."""
    fallback_on: frozenset[str] = DEFAULT_FALLBACK_ON
    """Error kinds after which the next candidate is tried; any other error ends the request."""
    hedge_after_ms: int = 0
    """Hedging (unary calls): start the next candidate beside an attempt that has not
    answered after this long; the first success wins, the others are cancelled."""
    hedge_max_extra: int = 0
    """Hedged attempts one request may start; 0: no hedging."""


DEFAULT_RETRY = RetrySettings()


@dataclass(frozen=True, slots=True)
class Constraints:
    """What every candidate must satisfy; candidates failing one are dropped, with the reason."""

    max_cost_nanos: int | None = None
    """Estimated cost of the request in nano-USD; ``None``: no limit."""
    max_latency_ms: int | None = None
    regions: frozenset[str] | None = None
    """Provider regions allowed; ``None``: any."""
    jurisdictions: frozenset[str] | None = None
    allow_egress: bool = False
    """Whether an on-prem node may dispatch to providers outside its premises."""
    certification_required_from: DataClass | None = DataClass.INTERNAL
    """Requests classified at or above this need a model certified for their class
    (or a stricter one); ``None``: never required."""


@dataclass(frozen=True, slots=True)
class Match:
    """When a rule applies. Every given field must match; an absent one matches anything."""

    tiers: frozenset[str] | None = None
    tasks: frozenset[str] | None = None
    metadata: tuple[tuple[str, frozenset[str]], ...] = ()
    capabilities: frozenset[Capability] = frozenset()
    """The request must require all of these."""
    data_classes: frozenset[DataClass] | None = None
    regions: frozenset[str] | None = None
    jurisdictions: frozenset[str] | None = None


MATCH_ALL = Match()
DEFAULT_CONSTRAINTS = Constraints()


@dataclass(frozen=True, slots=True)
class PricedModel:
    """A candidate model with what routing needs precomputed."""

    model: ModelConfig
    in_price: int
    out_price: int
    default_output: int
    certified_up_to: DataClass
    """The most sensitive class the model is certified for (UNSPECIFIED: none)."""

    @classmethod
    def of(cls, m: ModelConfig) -> PricedModel:
        return cls(
            m,
            m.input_price_nanos_per_mtok,
            m.output_price_nanos_per_mtok,
            m.max_output_tokens or DEFAULT_OUTPUT_TOKENS,
            max(m.certified_for, default=DataClass.UNSPECIFIED),
        )

    def estimated_cost_nanos(self, input_tokens: int, max_output: int | None) -> int:
        out = max_output if max_output is not None else self.default_output
        return (input_tokens * self.in_price + out * self.out_price) // 1_000_000


@dataclass(frozen=True, slots=True)
class Shadow:
    model: PricedModel
    share: float
    """Fraction of requests mirrored, chosen by a stable hash of the sticky key."""
    key: str = ""
    """What the share is drawn from; empty: the rule's sticky key, else the request id."""


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    match: Match
    strategy: Strategy
    candidates: tuple[PricedModel, ...]
    """In priority order (the strategy may reorder them per request)."""
    fallbacks: tuple[PricedModel, ...] = ()
    """Tried after every candidate, in this order, whatever the strategy."""
    cumulative_weights: tuple[float, ...] = ()
    """For ``weighted``: running sums of the candidates' weights, normalised to end at 1.0."""
    sticky_key: str = ""
    shadow: Shadow | None = None
    constraints: Constraints = Constraints()
    retry: RetrySettings = RetrySettings()
    considered: tuple[str, ...] = ()
    """Aliases of candidates then fallbacks, for explanations (computed once)."""


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    policy_id: str
    tenant_id: str
    version: int
    default_model: str | None
    allowed_models: frozenset[str] | None
    """None: every model in the registry is allowed."""
    rules: tuple[CompiledRule, ...] = ()
    """Checked in order; the first that matches routes the request."""
    default_rule: CompiledRule | None = None
    """The route when no rule matches; ``None`` means: default model, then allowed models by name."""
    constraints: Constraints = Constraints()
    retry: RetrySettings = RetrySettings()


# ---- governance (issue 10) ----
# Compiled governance profiles: ``dataplane.governance.profile.compile_profile`` builds them
# from a profile document, ``dataplane.governance.enforce`` runs them on the request path.


class Finding(Protocol):
    """Where a detector found something (``dataplane.governance.detect.Span``)."""

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...

    @property
    def kind(self) -> str: ...


class Finder(Protocol):
    """A built detector (``dataplane.governance.detect.Detector``)."""

    @property
    def name(self) -> str: ...

    def find(self, text: str) -> Sequence[Finding]: ...


class Stage(StrEnum):
    INPUT = "input"
    """The request, before routing."""
    OUTPUT = "output"
    """The answer, before the caller sees it."""


class Action(StrEnum):
    BLOCK = "block"
    REDACT = "redact"
    MASK = "mask"
    CLASSIFY = "classify"
    FLAG = "flag"


class OnFailure(StrEnum):
    """What an answer that does not meet the request's JSON schema gets."""

    ERROR = "error"
    """The request is refused, naming where the answer breaks the schema."""
    RETRY = "retry"
    """The next candidate model is tried; when none is left, as ``ERROR``."""
    FLAG = "flag"
    """The answer is returned; the failure is recorded."""


DEFAULT_STATUS = grpc.StatusCode.PERMISSION_DENIED
DEFAULT_PLACEHOLDER = "[REDACTED]"
DEFAULT_WINDOW = 256
"""Characters of look-behind output rules see across a stream's chunks (the schema's default)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule: what its detector finds gets ``action``.

    Compared by what the document said (``detector_name``, ``options``), not by the built
    detector, so two compiles of one profile are equal."""

    name: str
    stage: Stage
    detector_name: str
    options: str
    """The detector's options as canonical JSON."""
    action: Action
    detector: Finder = field(compare=False)
    """Built once, when the profile was compiled."""
    status: grpc.StatusCode = DEFAULT_STATUS
    """``block``: the refusal's status."""
    placeholder: str = DEFAULT_PLACEHOLDER
    """``redact``: what replaces each finding."""
    label: str = ""
    """``mask``: the numbered placeholders' stem (``EMAIL`` gives ``[EMAIL_1]``), from the
    detector's name."""
    data_class: DataClass = DataClass.UNSPECIFIED
    """``classify``: the class the request is raised to."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per request; None: no limit."""

    max_messages: int | None = None
    """Chat messages (an embedding request's inputs count as messages)."""
    max_characters: int | None = None
    """All the text a request carries (messages, tool arguments and results, embedding inputs)."""
    max_tools: int | None = None
    max_images: int | None = None

    def __bool__(self) -> bool:
        return any(
            v is not None for v in (self.max_messages, self.max_characters, self.max_tools, self.max_images)
        )


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class CompiledProfile:
    """A governance profile ready to run on the request path."""

    profile_id: str
    version: int
    limits: Limits = NO_LIMITS
    input_rules: tuple[Rule, ...] = ()
    output_rules: tuple[Rule, ...] = ()
    window: int = DEFAULT_WINDOW
    """Streaming: look-behind of output rules, and so the most a stream is held back."""
    contract: OnFailure | None = None
    """What an answer breaking the request's JSON schema gets; None: answers are not checked
    (the profile has no ``output.contract``)."""


# ---- governance (end) ----


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    version: int
    payload_sha256: bytes
    created_at: float
    expires_at: float | None
    scope: Scope
    tenants: Mapping[str, TenantConfig]
    api_keys: Mapping[bytes, ApiKeyEntry]
    """Keyed by the key's digest: HMAC-SHA256 under one of ``api_key_hash_keys`` (keys
    ``sbx_<id>_<secret>``) or SHA-256 (keys of the earlier format)."""
    providers: Mapping[str, ProviderConfig]
    """Keyed by provider id."""
    models: Mapping[str, ModelConfig]
    """Keyed by model alias."""
    policies: Mapping[str, CompiledPolicy]
    """Keyed by tenant id; ``""`` is the platform default."""
    identities: IdentityIndex = NO_IDENTITIES
    """JWT issuers and mTLS mappings (keys parsed once, at compile)."""
    governance: Mapping[str, CompiledProfile] = field(default_factory=dict)
    """Governance profiles keyed by tenant id; ``""`` is the platform default, which governs
    every tenant without one of its own. Empty: no governance at all."""
    api_key_hash_keys: tuple[bytes, ...] = field(default=(), repr=False, compare=False)
    """The live versions of the key of API keys' HMAC digests (``ApiKey.secret_hmac``), oldest
    first: not part of the snapshot, sent by the control plane on the sync stream; empty
    without one. Not compared: two configs compiled from one snapshot are equal whichever keys
    the node holds."""
    callers: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    """API key id -> the ``auth.Caller`` it authenticates as, made on its first request (a
    pure function of this config's key entry and tenant). Not an argument: a config made
    from another (``dataclasses.replace``) starts with its own."""

    @property
    def hash_hex(self) -> str:
        return self.payload_sha256.hex()

    def governance_for(self, tenant_id: str) -> CompiledProfile | None:
        """The profile governing ``tenant_id``'s requests: its own, else the platform
        default; None when neither exists (then governance costs nothing)."""
        profiles = self.governance
        if not profiles:
            return None
        return profiles.get(tenant_id) or profiles.get("")
