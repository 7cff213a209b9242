"""Request metrics: what each finished request adds to the node's Prometheus metrics.

Observed once per request, where its evidence record is written (``Pipeline._record``), from
the same ``Trace``: the metrics and the evidence count the same requests. Off (``metrics=None``
on the pipeline, the default in production) costs one attribute check per request.

Names follow the OpenTelemetry GenAI semantic conventions where they name a metric, in
Prometheus form (dots to underscores, the unit as a suffix): ``gen_ai_client_token_usage``,
``gen_ai_server_request_duration_seconds``, ``gen_ai_server_time_to_first_token_seconds``,
``gen_ai_server_time_per_output_token_seconds``, labelled ``gen_ai_operation_name``,
``gen_ai_provider_name`` and ``gen_ai_request_model``; the rest are Signalbox's own
(``signalbox_*``). Reasoning tokens (``gen_ai.usage.reasoning.output_tokens`` on a span) are
``signalbox_reasoning_output_tokens``, with the GenAI labels, not a ``gen_ai_token_type`` of
``gen_ai_client_token_usage``: the conventions define only input and output there, and
reasoning is part of the output, so a sum over the types would count it twice.

Label cardinality is bounded by the snapshot, never by callers: ``tenant`` is a tenant id the
snapshot holds (empty before authentication), ``model`` the alias of the model that served or
was routed to (empty when routing did not run: an unknown model name a caller sent is never a
label), provider names and deployment keys come from the snapshot, ``status`` is a gRPC code,
``outcome`` an error kind from our own fixed set, ``limit`` and ``rule`` name a configured
limit or governance rule. API keys and correlation ids are never labels; the correlation id
rides on exemplars of the request-duration histogram (OpenMetrics).

The metrics every request adds to (requests, duration, added time, tokens, cost) are plain
per-worker numbers (``_Sum``, ``_Buckets``) that ``_Collector`` turns into Prometheus families
at scrape time: a request adds to them with no lock, no label lookup and no exemplar check
(prometheus_client's ``observe`` took a lock per bucket and sum). Those every request of one
kind uses are found together by one lookup (``_Children``). The rarer ones (streams' token
timings, retries, fallbacks, refusals) stay prometheus_client metrics, their label children
cached per label tuple.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

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


def exemplar_id(cid: str) -> str | None:
    """The correlation id as an exemplar, or None to leave it out: too long, or holding a
    double quote, which prometheus_client's OpenMetrics parser (worker 0 reading the other
    workers' scrapes) cannot read back even escaped, so one caller's request id would fail
    the node's whole scrape."""
    return cid if len(cid) <= MAX_EXEMPLAR_CHARS and '"' not in cid else None


GOVERNANCE_REFUSALS = frozenset(
    {"Blocked", "BlockedInvalid", "NotCertified", "OverLimit", "AnswerBreaksContract"}
)
"""Outcome kinds of a governance refusal (``dataplane.governance.errors``)."""
REFUSING_ACTIONS = frozenset({"block", "error", "classify"})
OWN_RULES = frozenset({"contract", "other"})
"""``refusing_rule``'s names that no profile gives (besides ``limits.<name>``)."""

GEN_AI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "tenant")


class RequestMetrics:
    """The per-request metrics of one node worker, in ``registry``."""

    def __init__(self, registry: CollectorRegistry, worker: int = 0) -> None:
        self.registry = registry
        self.worker = str(worker)
        w = ("worker",)
        self._plain = _Collector(self.worker)
        registry.register(self._plain)
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
        self._capped = Counter(
            "signalbox_usage_capped",
            "Answers whose provider claimed more usage than the request made possible (counted at the caps).",
            ["tenant", "model", *w],
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

    def retain(self, tenants: Collection[str], models: Collection[str], rules: Collection[str]) -> None:
        """Drop the series of a tenant, a model (alias) or a governance rule a new snapshot
        no longer has: its labels came from an earlier snapshot, and each snapshot's would
        otherwise stay for the node's life. A request still running on the old snapshot adds
        its series again (until the next snapshot)."""
        labelled = {
            id(m): (m, names)
            for m, names in (
                (self._first_token, GEN_AI),
                (self._per_token, GEN_AI),
                (self._retries, ("tenant", "model")),
                (self._fallbacks, ("tenant", "model")),
                (self._limits, ("tenant", "limit")),
                (self._governance, ("tenant", "rule")),
                (self._capped, ("tenant", "model")),
            )
        }
        for key in list(self._children):
            metric, names = labelled[key[0]]
            if _stale(names, key[1:], tenants, models, rules):
                del self._children[key]
                metric.remove(*key[1:], self.worker)
        bundle = ("", "", "model", "tenant")
        self._bundles = {k: v for k, v in self._bundles.items() if not _stale(bundle, k, tenants, models)}
        self._plain.retain(tenants, models)

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
            plain = self._plain
            children = self._bundles[key] = _Children(
                plain.series(REQUESTS, (tenant, model, error or "ok", code.name)),
                plain.series(DURATION, (operation, provider, model, tenant, error)),
                plain.series(ADDED, (operation,)),
                (operation, provider, model, tenant),
            )
        children.requests.value += 1
        cid = trace.correlation_id
        children.duration.observe(total, exemplar_id(cid))
        attempts = trace.attempts
        if len(attempts) == 1:
            upstream = attempts[0].duration_ms / 1000.0
        else:
            upstream = sum(a.duration_ms for a in attempts) / 1000.0
        children.added.observe(max(total - upstream, 0.0), None)
        usage = trace.usage
        if usage is not None:
            if children.input_tokens is None:
                children.input_tokens = self._plain.series(TOKENS, (*children.gen_ai, "input"))
            children.input_tokens.observe(usage.input_tokens, None)
            if operation == "chat":
                if children.output_tokens is None:
                    children.output_tokens = self._plain.series(TOKENS, (*children.gen_ai, "output"))
                children.output_tokens.observe(usage.output_tokens, None)
                if usage.reasoning_output_tokens:
                    if children.reasoning_tokens is None:
                        children.reasoning_tokens = self._plain.series(REASONING, children.gen_ai)
                    children.reasoning_tokens.observe(usage.reasoning_output_tokens, None)
        if trace.first_chunk_ms is not None:
            first = trace.first_chunk_ms / 1000.0
            self._child(self._first_token, operation, provider, model, tenant).observe(first)
            if usage is not None and usage.output_tokens > 1:
                per_token = max(total - first, 0.0) / (usage.output_tokens - 1)
                self._child(self._per_token, operation, provider, model, tenant).observe(per_token)
        if trace.cost.total_nanos:
            if children.cost is None:
                children.cost = self._plain.series(COST, (tenant, model))
            children.cost.value += trace.cost.total_nanos / 1e9
        if len(attempts) > 1:
            self._child(self._retries, tenant, model).inc(len(attempts) - 1)
            if attempts[-1].candidate.key != attempts[0].candidate.key:
                self._child(self._fallbacks, tenant, model).inc()
        if trace.limit:
            self._child(self._limits, tenant, limit_label(trace.limit)).inc()
        for capped, _ in trace.capped:
            self._child(self._capped, tenant, capped.model.alias).inc()
        if outcome.kind in GOVERNANCE_REFUSALS:
            self._child(self._governance, tenant, refusing_rule(trace.governance)).inc()


class _Children:
    """The series every request of one (operation, provider, model, tenant, outcome) adds
    to, found by one lookup; the token histograms' made on first use (a series appears only
    once something was observed in it), the cost's on the first request that cost something."""

    __slots__ = (
        "added",
        "cost",
        "duration",
        "gen_ai",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "requests",
    )

    def __init__(self, requests: _Sum, duration: _Buckets, added: _Buckets, gen_ai: tuple[str, ...]) -> None:
        self.requests = requests
        self.duration = duration
        self.added = added
        self.cost: _Sum | None = None
        self.gen_ai = gen_ai
        """Its (operation, provider, model, tenant) labels, for the token series."""
        self.input_tokens: _Buckets | None = None
        self.output_tokens: _Buckets | None = None
        self.reasoning_tokens: _Buckets | None = None


class _Sum:
    """A counter's value: only the event loop adds to it; a scrape reads it."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()


class _Buckets:
    """A histogram's bucket counts (not cumulative; the last is +Inf), its sum and each
    bucket's last exemplar (correlation id, value, wall time)."""

    __slots__ = ("bounds", "counts", "created", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.exemplars: list[tuple[str, float, float] | None] = [None] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float, exemplar: str | None) -> None:
        # The first bucket whose upper bound is >= value (Prometheus buckets are "le").
        i = bisect_left(self.bounds, value)
        self.counts[i] += 1
        self.sum += value
        if exemplar is not None:
            self.exemplars[i] = (exemplar, value, time.time())


class _Family:
    """One metric of ``_Collector``: its name, help, labels and buckets (None: a counter)."""

    __slots__ = ("buckets", "documentation", "labels", "name")

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...] | None = None
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = (*labels, "worker")
        self.buckets = buckets


REQUESTS = _Family(
    "signalbox_requests",
    "Requests the node finished, by tenant, model, outcome (ok or the error kind) and gRPC status.",
    ("tenant", "model", "outcome", "status"),
)
DURATION = _Family(
    "gen_ai_server_request_duration_seconds",
    "Time from the request's arrival to its answer or refusal (GenAI semantic conventions).",
    (*GEN_AI, "error_type"),
    DURATION_BUCKETS,
)
ADDED = _Family(
    "signalbox_node_added_seconds",
    "Time the node itself added to a request: its total time less the time spent in upstream calls.",
    ("gen_ai_operation_name",),
    ADDED_BUCKETS,
)
TOKENS = _Family(
    "gen_ai_client_token_usage",
    "Tokens per request by type, input or output (GenAI semantic conventions).",
    (*GEN_AI, "gen_ai_token_type"),
    TOKEN_BUCKETS,
)
REASONING = _Family(
    "signalbox_reasoning_output_tokens",
    "Of a chat request's output tokens, those the model spent reasoning, where its provider reports"
    " any (gen_ai.usage.reasoning.output_tokens; a part of gen_ai_client_token_usage's output).",
    GEN_AI,
    TOKEN_BUCKETS,
)
COST = _Family(
    "signalbox_cost_usd", "What requests cost, in USD, as their evidence records say.", ("tenant", "model")
)
PLAIN_FAMILIES = (REQUESTS, DURATION, ADDED, TOKENS, REASONING, COST)
"""The metrics every request adds to, kept by ``_Collector`` (their definitions; each
worker's series are its own)."""


class _Collector(Collector):
    """The per-request metrics of one worker as plain numbers, made Prometheus families
    only when scraped."""

    def __init__(self, worker: str) -> None:
        self._worker = worker
        self._series: dict[str, dict[tuple[str, ...], Any]] = {f.name: {} for f in PLAIN_FAMILIES}

    def series(self, family: _Family, values: tuple[str, ...]) -> Any:
        """The series of ``family`` with these label values (made on first use)."""
        series = self._series[family.name]
        found = series.get(values)
        if found is None:
            found = series[values] = _Sum() if family.buckets is None else _Buckets(family.buckets)
        return found

    def retain(self, tenants: Collection[str], models: Collection[str]) -> None:
        """Drop the series naming a tenant or a model not in these (``RequestMetrics.retain``)."""
        for family in PLAIN_FAMILIES:
            names = family.labels
            # Replaced, not edited: a scrape (another thread) may be copying the old one.
            self._series[family.name] = {
                values: found
                for values, found in self._series[family.name].items()
                if not _stale(names, values, tenants, models)
            }

    def collect(self) -> Iterable[Metric]:
        for family in PLAIN_FAMILIES:
            # A copy: the event loop may add a series while a scrape (another thread) reads.
            series = list(self._series[family.name].items())
            if family.buckets is None:
                counter = CounterMetricFamily(family.name, family.documentation, labels=family.labels)
                for values, total in series:
                    counter.add_metric([*values, self._worker], total.value, created=total.created)
                yield counter
                continue
            histogram = HistogramMetricFamily(family.name, family.documentation, labels=family.labels)
            bounds = [*map(floatToGoString, family.buckets), "+Inf"]
            for values, observed in series:
                counts, exemplars = list(observed.counts), list(observed.exemplars)
                buckets: list[Any] = []
                cumulative = 0
                for bound, count, exemplar in zip(bounds, counts, exemplars, strict=True):
                    cumulative += count
                    if exemplar is None:
                        buckets.append((bound, cumulative))
                    else:
                        cid, value, at = exemplar
                        buckets.append((bound, cumulative, Exemplar({"correlation_id": cid}, value, at)))
                histogram.add_metric([*values, self._worker], buckets, observed.sum)
            yield histogram


def _stale(
    names: Sequence[str],
    values: Sequence[str],
    tenants: Collection[str],
    models: Collection[str],
    rules: Collection[str] = (),
) -> bool:
    """Whether a series' labels name a tenant, a model or a profile's rule outside
    ``tenants``, ``models`` and ``rules`` (an empty one names none; ``limits.<name>``,
    ``contract`` and ``other`` are the node's own)."""
    for name, value in zip(names, values, strict=False):
        if value and (
            (name == "tenant" and value not in tenants)
            or (name in ("model", "gen_ai_request_model") and value not in models)
            or (
                name == "rule"
                and value not in rules
                and value not in OWN_RULES
                and not value.startswith("limits.")
            )
        ):
            return True
    return False


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
