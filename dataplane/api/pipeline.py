"""The steps every Infer API request goes through, in order.

    begin        correlation id, timers, request digest
    admit        snapshot (UNAVAILABLE without one) -> authenticate -> the key's
                 scopes allow the operation and the task (``dataplane.scopes``)
    (convert and validate the request: ``convert``, ``validation``)
    route        an explicit model within the key's scopes, plan_route, then drop
                 candidates outside the key's scopes, that the node cannot use or
                 that cannot honour max_output_tokens
    dispatch     through the node's Dispatcher within the caller's deadline (handlers)
    account      usage -> cost from the chosen model's prices
    record       exactly one evidence record, whatever the outcome

Handlers in ``dataplane.api.service`` call these steps; nothing here knows
about protobuf beyond building the routing summary and digests.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from dataplane.api import validation
from dataplane.api.status import Outcome
from dataplane.auth import Caller, authenticate, bearer_token
from dataplane.chat import Usage
from dataplane.config.model import ModelConfig
from dataplane.config.store import ServingState, SnapshotStore
from dataplane.errors import CredentialUnavailable, EvidenceUnavailable, InvalidRequest
from dataplane.evidence.log import EvidenceLog
from dataplane.routing.dispatch import AttemptRecord, Dispatcher, ShadowOutcome
from dataplane.routing.router import Candidate, NodeContext, RoutePlan, RouteQuery, plan_route
from dataplane.scopes import CHAT, EMBED, STREAM, nothing_in_scope, within_scope
from signalbox.api.common.v1 import common_pb2
from signalbox.api.infer.v1 import infer_pb2

log = logging.getLogger("signalbox.dataplane.api")

Metadata = Iterable[tuple[str, str | bytes]]

DEFAULT_DEADLINE_S = 60.0
"""Budget for a request whose caller set no deadline."""

_MTOK = 1_000_000

SCOPE_OPERATION = {"infer": CHAT, "stream": STREAM, "embed": EMBED}
"""The ``op:`` scope value of each request kind (``Trace.kind``)."""


@dataclass(frozen=True, slots=True)
class Cost:
    input_nanos: int
    output_nanos: int

    @property
    def total_nanos(self) -> int:
        return self.input_nanos + self.output_nanos

    def to_proto(self) -> common_pb2.Cost:
        return common_pb2.Cost(
            currency="USD",
            input_nanos=self.input_nanos,
            output_nanos=self.output_nanos,
            total_nanos=self.total_nanos,
        )


NO_COST = Cost(0, 0)


def cost_of(model: ModelConfig, usage: Usage | None) -> Cost:
    """Nano-USD from the model's per-million-token prices; cached input at its own price
    (the input price when the model has none), rounded half up per component."""
    if usage is None:
        return NO_COST
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    cached_price = model.cached_input_price_nanos_per_mtok or model.input_price_nanos_per_mtok
    input_nanos = (
        (usage.input_tokens - cached) * model.input_price_nanos_per_mtok + cached * cached_price + _MTOK // 2
    ) // _MTOK
    output_nanos = (usage.output_tokens * model.output_price_nanos_per_mtok + _MTOK // 2) // _MTOK
    return Cost(input_nanos, output_nanos)


@dataclass(slots=True)
class Trace:
    """What one request did, gathered step by step for its evidence record."""

    kind: str
    correlation_id: str
    started: float
    started_wall: float
    request_sha256: str
    state: ServingState | None = None
    caller: Caller | None = None
    plan: RoutePlan | None = None
    candidate: Candidate | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    usage: Usage | None = None
    cost: Cost = NO_COST
    response_sha256: str = ""
    first_chunk_ms: float | None = None
    dispatch_ms: float | None = None
    invalid_correlation_id: InvalidRequest | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """Candidates the dispatcher passed over without an attempt, and why."""


def correlation_id_of(supplied: str, metadata: Metadata | None) -> str:
    """The caller's id (request field, then ``x-correlation-id`` metadata) or a new one."""
    if supplied:
        return validation.correlation_id(supplied)
    for name, value in metadata or ():
        if name == "x-correlation-id":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            return validation.correlation_id(text, "metadata x-correlation-id")
    return secrets.token_hex(16)


class Pipeline:
    """The request steps bound to one node's store, dispatcher, evidence log and context."""

    def __init__(
        self,
        store: SnapshotStore,
        dispatcher: Dispatcher,
        evidence: EvidenceLog,
        node: NodeContext,
        *,
        default_deadline: float = DEFAULT_DEADLINE_S,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.evidence = evidence
        self.node = node
        self.default_deadline = default_deadline

    # ---- steps ----

    def begin(self, kind: str, request: Any, supplied_id: str, metadata: Metadata | None) -> Trace:
        """Start the trace. An invalid caller-supplied correlation id is replaced by a
        generated one (so the refusal can still be correlated) and reported after."""
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        now = time.monotonic()
        try:
            return Trace(kind, correlation_id_of(supplied_id, metadata), now, time.time(), digest)
        except InvalidRequest as exc:
            trace = Trace(kind, secrets.token_hex(16), now, time.time(), digest)
            trace.invalid_correlation_id = exc
            return trace

    def admit(self, trace: Trace, metadata: Metadata | None, task: str = "") -> tuple[ServingState, Caller]:
        """Snapshot and caller, or the error that refuses the request (``task``: the request's)."""
        state = self.store.require()
        trace.state = state
        caller = authenticate(state.config, bearer_token(metadata), trace.started_wall)
        trace.caller = caller
        if trace.invalid_correlation_id is not None:
            # Reported after authentication so an anonymous caller learns nothing else.
            raise trace.invalid_correlation_id
        # Key scopes: operation and task (an unknown kind is denied when ops are restricted).
        caller.key.scope.check_request(SCOPE_OPERATION.get(trace.kind, trace.kind), task)
        return state, caller

    def route(
        self, trace: Trace, state: ServingState, query: RouteQuery, max_output_tokens: int | None = None
    ) -> RoutePlan:
        plan = self._route_in_scope(trace, state, query)
        ordered = plan.ordered
        if state.unusable:
            ordered = tuple(c for c in ordered if c.provider.id not in state.unusable)
            if not ordered:
                reasons = "; ".join(
                    f"provider {c.provider.name or c.provider.id}: {state.unusable[c.provider.id]}"
                    for c in plan.ordered
                )
                raise CredentialUnavailable(f"no usable provider for this request ({reasons})")
        if max_output_tokens is not None:
            fits = tuple(
                c
                for c in ordered
                if not c.model.max_output_tokens or max_output_tokens <= c.model.max_output_tokens
            )
            if not fits:
                model = ordered[0].model
                raise InvalidRequest(
                    "params.max_output_tokens",
                    f"{max_output_tokens} is above the maximum of model {model.alias!r} "
                    f"({model.max_output_tokens})",
                )
            ordered = fits
        if ordered is not plan.ordered:
            plan = replace(plan, ordered=ordered)
            trace.plan = plan
        return plan

    def _route_in_scope(self, trace: Trace, state: ServingState, query: RouteQuery) -> RoutePlan:
        """plan_route within the key's ``model:`` scopes: a model the caller names must be in
        them; of the policy's candidates (and shadow) those outside are dropped, with the
        reason in the plan, and the request is refused when none is left."""
        scope = trace.caller.key.scope if trace.caller is not None else None
        if scope is not None and query.model:
            scope.check_model(query.model)
        plan = plan_route(state.config, query, self.node, health=self.dispatcher.health)
        trace.plan = plan
        if scope is None:
            return plan
        kept, drops = within_scope(scope, plan.ordered)
        shadow = plan.shadow
        if shadow is not None and not scope.allows_model(shadow.model.alias):
            shadow = None
        if drops or shadow is not plan.shadow:
            plan = replace(plan, ordered=kept, dropped=plan.dropped + drops, shadow=shadow)
            trace.plan = plan
        if drops and not kept:
            raise nothing_in_scope(scope, drops)
        return plan

    def shadow(
        self,
        trace: Trace,
        state: ServingState,
        plan: RoutePlan,
        attempt: Callable[[Candidate, float], Awaitable[Any]],
        deadline: float,
    ) -> None:
        """Mirror the request when the plan says so; its outcome gets its own evidence record."""
        if plan.shadow is None:
            return

        async def mirrored(candidate: Candidate, remaining: float) -> Any:
            # Hold the snapshot's adapters for as long as the mirror runs.
            with state.use():
                return await attempt(candidate, remaining)

        def recorded(outcome: ShadowOutcome[Any]) -> None:
            try:
                self.evidence.append(shadow_fields(trace, outcome))
            except (OSError, ValueError) as exc:
                log.error("evidence of the shadow call of %s not written: %s", trace.correlation_id, exc)

        self.dispatcher.shadow(plan, mirrored, deadline=deadline, on_outcome=recorded)

    def deadline(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        """Absolute ``time.monotonic()`` deadline for dispatch.

        A little is kept back from the caller's own deadline so the node's
        DEADLINE_EXCEEDED (with the correlation id) reaches the caller before its
        channel gives up on its own.
        """
        remaining: float | None = context.time_remaining()
        if remaining is None:
            return time.monotonic() + self.default_deadline
        return time.monotonic() + remaining - min(0.05, remaining * 0.1)

    def account(self, trace: Trace, candidate: Candidate, usage: Usage | None) -> Cost:
        trace.usage = usage
        trace.cost = cost_of(candidate.model, usage)
        return trace.cost

    def record(self, trace: Trace, outcome: Outcome) -> str:
        """Append the request's one evidence record; return its id."""
        total_ms = (time.monotonic() - trace.started) * 1000
        state, caller, plan, candidate, usage = (
            trace.state,
            trace.caller,
            trace.plan,
            trace.candidate,
            trace.usage,
        )
        fields: dict[str, Any] = {
            "ts": trace.started_wall,
            "kind": trace.kind,
            "correlation_id": trace.correlation_id,
            "tenant_id": caller.tenant.id if caller else "",
            "api_key_id": caller.key.id if caller else "",
            "snapshot": {"version": state.version, "sha256": state.config.hash_hex} if state else None,
            "policy": {"id": plan.policy_id, "version": plan.policy_version} if plan else None,
            "routing": _routing_record(plan, candidate, trace.attempts, trace.skipped) if plan else None,
            "timings": {
                "total_ms": round(total_ms, 3),
                "dispatch_ms": round(trace.dispatch_ms, 3) if trace.dispatch_ms is not None else None,
                "first_chunk_ms": round(trace.first_chunk_ms, 3)
                if trace.first_chunk_ms is not None
                else None,
            },
            "usage": _usage_fields(usage),
            "cost": _cost_fields(trace.cost),
            "outcome": {"code": outcome.code.name, "message": outcome.message, "error": outcome.kind},
            "request_sha256": trace.request_sha256,
            "response_sha256": trace.response_sha256,
        }
        try:
            record_id = self.evidence.append(fields)
        except (OSError, ValueError) as exc:  # ValueError: the file was closed under us
            log.error("evidence record of %s not written: %s", trace.correlation_id, exc)
            raise EvidenceUnavailable("node cannot write evidence; request not served") from exc
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s %s %.1fms evidence=%s",
                trace.kind,
                trace.correlation_id,
                outcome.code.name,
                total_ms,
                record_id,
            )
        return record_id


def shadow_fields(trace: Trace, outcome: ShadowOutcome[Any]) -> dict[str, Any]:
    """The evidence of a mirrored call: the request's data went to another deployment too."""
    c = outcome.candidate
    usage = getattr(outcome.result, "usage", None)
    cost = cost_of(c.model, usage)
    return {
        "ts": time.time(),
        "kind": "shadow",
        "correlation_id": trace.correlation_id,
        "tenant_id": trace.caller.tenant.id if trace.caller else "",
        "api_key_id": trace.caller.key.id if trace.caller else "",
        "snapshot": {"version": trace.state.version, "sha256": trace.state.config.hash_hex}
        if trace.state
        else None,
        "policy": {"id": trace.plan.policy_id, "version": trace.plan.policy_version} if trace.plan else None,
        "routing": {"served_by": {"model": c.model.alias, "provider": c.provider.id, "deployment": c.key}},
        "timings": {"total_ms": outcome.duration_ms},
        "usage": _usage_fields(usage),
        "cost": _cost_fields(cost),
        "outcome": {"code": "OK" if outcome.outcome == "ok" else outcome.outcome, "message": outcome.error},
        "request_sha256": trace.request_sha256,
    }


def _usage_fields(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_input_tokens": usage.cache_write_input_tokens,
    }


def _cost_fields(cost: Cost) -> dict[str, Any]:
    return {
        "currency": "USD",
        "input_nanos": cost.input_nanos,
        "output_nanos": cost.output_nanos,
        "total_nanos": cost.total_nanos,
    }


def _routing_record(
    plan: RoutePlan,
    candidate: Candidate | None,
    attempts: list[AttemptRecord],
    skipped: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    # The decision, not the policy that produced it: retry settings and the like are
    # identified by the record's policy id and version, so they are not repeated here.
    return {
        "rule": plan.rule,
        "strategy": plan.strategy,
        "reason": plan.reason,
        "arm": plan.arm,
        "candidates": plan.considered,
        "dropped": plan.dropped,
        "deferred": plan.deferred,
        "order": [c.label for c in plan.ordered],
        "shadow": plan.shadow.label if plan.shadow is not None else None,
        "skipped": skipped,
        "served_by": (
            {"model": candidate.model.alias, "provider": candidate.provider.id, "deployment": candidate.key}
            if candidate
            else None
        ),
        "attempts": [
            {
                "model": a.candidate.model.alias,
                "provider": a.candidate.provider.id,
                "deployment": a.candidate.key,
                "outcome": a.outcome,
                "error": a.error,
                "http_status": a.http_status,
                "duration_ms": a.duration_ms,
                "backoff_ms": a.backoff_ms,
            }
            for a in attempts
        ],
    }


def routing_to_proto(
    plan: RoutePlan, candidate: Candidate | None, attempts: list[AttemptRecord]
) -> infer_pb2.RoutingDecision:
    """The routing summary callers receive."""
    decision = infer_pb2.RoutingDecision(
        policy_id=plan.policy_id,
        policy_version=plan.policy_version,
        rule=plan.rule,
        strategy=plan.strategy,
        candidates=plan.considered,
        reason=plan.reason,
    )
    for model, reason in plan.dropped:
        decision.dropped.add(model=model, reason=reason)
    if candidate is not None:
        decision.chosen_model = candidate.model.alias
        decision.chosen_provider = candidate.provider.name or candidate.provider.id
        decision.chosen_deployment = candidate.deployment.id
    for a in attempts:
        decision.attempts.add(
            model=a.candidate.model.alias,
            provider=a.candidate.provider.name or a.candidate.provider.id,
            deployment=a.candidate.deployment.id,
            outcome=a.outcome,
            error=a.error,
            duration_ms=a.duration_ms,
        )
    return decision
