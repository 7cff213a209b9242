"""Request metrics: what each finished request adds to the node's Prometheus metrics.

Observed once per request, where its evidence record is written (``Pipeline._record``), from
the same ``Trace``: the metrics and the evidence count the same requests. Off (``metrics=None``
on the pipeline, the default in production) costs one attribute check per request.

Names follow the OpenTelemetry GenAI semantic conventions where they name a metric, in
Prometheus form (dots to underscores, the unit as a suffix): ``gen_ai_client_token_usage``,
``gen_ai_server_request_duration_seconds``, ``gen_ai_server_time_to_first_token_seconds``,
``gen_ai_server_time_per_output_token_seconds``, labelled ``gen_ai_operation_name``,
``gen_ai_provider_name`` and ``gen_ai_request_model``; the rest are Signalbox's own
(``signalbox_*``).

Label cardinality is bounded by the snapshot, never by callers: ``tenant`` is a tenant id the
snapshot holds (empty before authentication), ``model`` the alias of the model that served or
was routed to (empty when routing did not run: an unknown model name a caller sent is never a
label), provider names and deployment keys come from the snapshot, ``status`` is a gRPC code,
``outcome`` an error kind from our own fixed set, ``limit`` and ``rule`` name a configured
limit or governance rule. API keys and correlation ids are never labels; the correlation id
rides on exemplars of the request-duration histogram (OpenMetrics).

Label children are cached per label tuple: ``labels()`` costs more than the increment itself;
those every request of one kind uses are found together by one lookup (``_Children``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from dataplane.outcome import Outcome
from dataplane.pipeline.trace import Trace
from dataplane.quota.buckets import KIND_LABEL

GEN_AI_OPERATION = {"infer": "chat", "stream": "chat", "embed": "embeddings"}
"""Evidence kind -> ``gen_ai.operation.name``."""

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ADDED_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MAX_EXEMPLAR_CHARS = 100
"""OpenMetrics allows 128 characters of exemplar labels; a longer correlation id is left out."""

GOVERNANCE_REFUSALS = frozenset(
    {"Blocked", "BlockedInvalid", "NotCertified", "OverLimit", "AnswerBreaksContract"}
)
"""Outcome kinds of a governance refusal (``dataplane.governance.errors``)."""
REFUSING_ACTIONS = frozenset({"block", "error", "classify"})

GEN_AI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "tenant")


class RequestMetrics:
    """The per-request metrics of one node worker, in ``registry``."""

    def __init__(self, registry: CollectorRegistry, worker: int = 0) -> None:
        self.registry = registry
        self.worker = str(worker)
        w = ("worker",)
        self._requests = Counter(
            "signalbox_requests",
            "Requests the node finished, by tenant, model, outcome (ok or the error kind) and gRPC status.",
            ["tenant", "model", "outcome", "status", *w],
            registry=registry,
        )
        self._duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time from the request's arrival to its answer or refusal (GenAI semantic conventions).",
            [*GEN_AI, "error_type", *w],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._added = Histogram(
            "signalbox_node_added_seconds",
            "Time the node itself added to a request: its total time less the time spent in upstream calls.",
            ["gen_ai_operation_name", *w],
            buckets=ADDED_BUCKETS,
            registry=registry,
        )
        self._tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per request by type, input or output (GenAI semantic conventions).",
            [*GEN_AI, "gen_ai_token_type", *w],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self._first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first chunk (GenAI semantic conventions).",
            [*GEN_AI, *w],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._per_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, streamed requests (GenAI semantic conventions).",
            [*GEN_AI, *w],
            buckets=PER_TOKEN_BUCKETS,
            registry=registry,
        )
        self._cost = Counter(
            "signalbox_cost_usd",
            "What requests cost, in USD, as their evidence records say.",
            ["tenant", "model", *w],
            registry=registry,
        )
        self._retries = Counter(
            "signalbox_upstream_retries",
            "Upstream attempts after a request's first.",
            ["tenant", "model", *w],
            registry=registry,
        )
        self._fallbacks = Counter(
            "signalbox_fallbacks",
            "Requests served or failed on a deployment other than the first they tried.",
            ["tenant", "model", *w],
            registry=registry,
        )
        self._limits = Counter(
            "signalbox_limit_refusals",
            "Requests refused by a rate limit or budget, by the limit.",
            ["tenant", "limit", *w],
            registry=registry,
        )
        self._governance = Counter(
            "signalbox_governance_refusals",
            "Requests or answers a governance rule blocked, by the rule.",
            ["tenant", "rule", *w],
            registry=registry,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._bundles: dict[tuple[Any, ...], _Children] = {}

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values, self.worker)
        return child

    def observe(self, trace: Trace, outcome: Outcome, now: Callable[[], float]) -> None:
        """Add one finished request; ``now`` is the monotonic clock its timers use."""
        total = now() - trace.started
        tenant = trace.caller.tenant.id if trace.caller is not None else ""
        candidate = trace.candidate
        if candidate is None and trace.plan is not None and trace.plan.ordered:
            candidate = trace.plan.ordered[0]
        model = candidate.model.alias if candidate is not None else ""
        provider = candidate.provider.type if candidate is not None else ""
        operation = GEN_AI_OPERATION.get(trace.kind, trace.kind)
        code = outcome.code
        key = (operation, provider, model, tenant, outcome.kind, code)
        children = self._bundles.get(key)
        if children is None:
            error = "" if code is grpc.StatusCode.OK else (outcome.kind or code.name.lower())
            children = self._bundles[key] = _Children(
                self._child(self._requests, tenant, model, error or "ok", code.name),
                self._child(self._duration, operation, provider, model, tenant, error),
                self._child(self._added, operation),
            )
        children.requests.inc()
        cid = trace.correlation_id
        if len(cid) <= MAX_EXEMPLAR_CHARS:
            children.duration.observe(total, {"correlation_id": cid})
        else:
            children.duration.observe(total)
        attempts = trace.attempts
        if len(attempts) == 1:
            upstream = attempts[0].duration_ms / 1000.0
        else:
            upstream = sum(a.duration_ms for a in attempts) / 1000.0
        children.added.observe(max(total - upstream, 0.0))
        usage = trace.usage
        if usage is not None:
            if children.input_tokens is None:
                children.input_tokens = self._child(self._tokens, operation, provider, model, tenant, "input")
            children.input_tokens.observe(usage.input_tokens)
            if operation == "chat":
                if children.output_tokens is None:
                    children.output_tokens = self._child(
                        self._tokens, operation, provider, model, tenant, "output"
                    )
                children.output_tokens.observe(usage.output_tokens)
        if trace.first_chunk_ms is not None:
            first = trace.first_chunk_ms / 1000.0
            self._child(self._first_token, operation, provider, model, tenant).observe(first)
            if usage is not None and usage.output_tokens > 1:
                per_token = max(total - first, 0.0) / (usage.output_tokens - 1)
                self._child(self._per_token, operation, provider, model, tenant).observe(per_token)
        if trace.cost.total_nanos:
            self._child(self._cost, tenant, model).inc(trace.cost.total_nanos / 1e9)
        if len(attempts) > 1:
            self._child(self._retries, tenant, model).inc(len(attempts) - 1)
            if attempts[-1].candidate.key != attempts[0].candidate.key:
                self._child(self._fallbacks, tenant, model).inc()
        if trace.limit:
            self._child(self._limits, tenant, limit_label(trace.limit)).inc()
        if outcome.kind in GOVERNANCE_REFUSALS:
            self._child(self._governance, tenant, refusing_rule(trace.governance)).inc()


class _Children:
    """The label children every request of one (operation, provider, model, tenant, outcome)
    observes, found by one lookup; the token histograms' made on first use (a series appears
    only once something was observed in it)."""

    __slots__ = ("added", "duration", "input_tokens", "output_tokens", "requests")

    def __init__(self, requests: Any, duration: Any, added: Any) -> None:
        self.requests = requests
        self.duration = duration
        self.added = added
        self.input_tokens: Any = None
        self.output_tokens: Any = None


def limit_label(limit: str) -> str:
    """A refusing limit as a bounded label: ``tenant``/``key`` and the kind, e.g.
    ``key requests per minute`` (the limit's own name holds the key id: never a label)."""
    scope = "key" if limit.startswith("api key ") else "tenant"
    for kind in KIND_LABEL.values():
        if limit.endswith(kind):
            return f"{scope} {kind}"
    return f"{scope} other"


def refusing_rule(actions: list[dict[str, object]]) -> str:
    """The rule a governance refusal names: the last that blocked, failed a contract or
    classified the request (profile rule names, ``limits.<name>``, ``contract``)."""
    for action in reversed(actions):
        rule = action.get("rule")
        if action.get("action") in REFUSING_ACTIONS and isinstance(rule, str):
            return rule
    return "other"
