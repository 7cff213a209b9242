"""What one request did, gathered step by step, and the evidence record made of it."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dataplane.accounting import (
    NO_COST,
    Capped,
    Cost,
    added,
    capped_usage,
    cost_of,
    estimated_usage,
    output_cap,
)
from dataplane.auth import Caller
from dataplane.chat import ChatRequest, ChatResponse, EmbedRequest, Usage
from dataplane.config.model import DEFAULT_OUTPUT_TOKENS
from dataplane.errors import InvalidRequest
from dataplane.outcome import Outcome
from dataplane.pipeline.call import RequestGovernance
from dataplane.quota import Reservation
from dataplane.random_ids import token_hex
from dataplane.routing.attempts import CANCELLED, HEDGED
from dataplane.routing.candidate import Candidate
from dataplane.routing.dispatch import AttemptRecord, ShadowOutcome
from dataplane.routing.query import RoutePlan
from dataplane.snapshot.serving import ServingState

log = logging.getLogger("signalbox.dataplane.pipeline")

CUT_SHORT = frozenset({"timeout", CANCELLED, HEDGED})
"""Outcomes of attempts the upstream had and did not answer, or whose answer lost a hedge
(``Trace.charge_timeouts``)."""


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
    usage_estimated: bool = False
    """``usage`` is the node's estimate: the provider never reported it (``estimated_usage``)."""
    capped: list[tuple[Candidate, Capped]] = field(default_factory=list)
    """Answers whose provider claimed more usage than the request made possible (``count``)."""
    input_tokens: int = 0
    """The request's input tokens as the node estimates them (``reserved_input_tokens``)."""
    charged: int = 0
    """How many of ``attempts`` ``charge_timeouts`` has looked at."""
    max_output_tokens: int | None = None
    """The request's max tokens (None: not given)."""
    embeds: bool = False
    cost: Cost = NO_COST
    discarded: Usage | None = None
    """Usage of the answers upstreams gave that were not served (governance refused them):
    paid for all the same, so in ``usage`` and ``cost`` too (``discard``)."""
    discarded_cost: Cost = NO_COST
    response_sha256: str = ""
    first_chunk_ms: float | None = None
    dispatch_ms: float | None = None
    invalid_correlation_id: InvalidRequest | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """Candidates the dispatcher passed over without an attempt, and why."""
    governance: list[dict[str, Any]] = field(default_factory=list)
    """What governance steps did to the request or the answer (empty: nothing)."""
    governors: list[RequestGovernance] = field(default_factory=list)
    """What governs this request (empty: nothing, the usual case without profiles)."""
    recorded: str | None = None
    """The evidence record id once written ("" when it could not be): exactly one per request."""
    record_id: str = field(default_factory=lambda: token_hex(16))
    """The id the record will have: a stream names it in its first event, before it is written."""
    content: dict[str, Any] | None = None
    """The request's and the answer's content, for a tenant whose evidence is FULL (None:
    digests only, the default)."""
    reservation: Reservation | None = None
    """What the request took from its tenant's and key's limits, settled when recorded."""
    limit: str = ""
    """The rate limit or budget that refused the request ("" when none did)."""
    span: Any = None
    """The request's OpenTelemetry span, when tracing is on (``pipeline.tracing``)."""
    marks: list[tuple[str, int]] | None = None
    """When tracing is on: each step's name and ``monotonic_ns`` as it ended (None: off)."""

    def count(self, candidate: Candidate, usage: Usage | None) -> Usage | None:
        """The usage ``candidate``'s provider claimed for its answer, as the node counts it:
        capped at what the request made possible (``capped_usage``). A claim beyond it is kept
        verbatim in ``capped`` (the record's ``usage.capped``), logged and counted in metrics."""
        if usage is None:
            return None
        capped = capped_usage(usage, candidate.model, self.max_output_tokens, self.embeds)
        if capped is None:
            return usage
        self.capped.append((candidate, capped))
        claimed_too_much(self.correlation_id, candidate, capped)
        return capped.counted

    def estimate(self, candidate: Candidate, output_chars: int) -> Usage:
        """The node's own count of an answer of ``output_chars`` characters whose provider never
        reported its usage (``estimated_usage``), at the same caps as a claim (``count``): a
        provider ignoring the request's max tokens must not be billed past it for saying
        nothing, any more than for claiming it."""
        self.usage_estimated = True
        usage = estimated_usage(self.input_tokens, output_chars)
        capped = capped_usage(usage, candidate.model, self.max_output_tokens, self.embeds)
        return usage if capped is None else capped.counted

    def discard(self, candidate: Candidate, response: ChatResponse) -> None:
        """``candidate``'s answer ``response`` is not served (governance refused it, and the
        request falls back or is refused): it still counts (estimated when it says nothing)."""
        usage = self.count(candidate, response.usage)
        if usage is None:
            usage = self.estimate(candidate, len(response.message.text))
        self.discarded = added(self.discarded, usage)
        self.discarded_cost += cost_of(candidate.model, usage)

    def charge_timeouts(self) -> None:
        """Count each attempt cut by a timeout, in flight when the request was cancelled, or
        cancelled because a hedge answered first (``attempts``), as if it generated its whole
        answer: the upstream had the request and may bill it in full (a provider usually
        finishes a generation its caller stopped waiting for). Without it a caller setting a
        short deadline had every request cost nothing against its budget, whatever the
        provider billed. Estimated: the input as reserved, the output at the request's cap."""
        attempts, self.charged = self.attempts[self.charged :], len(self.attempts)
        for attempt in attempts:  # each counted once, however often this is called
            if attempt.outcome not in CUT_SHORT:
                continue
            model = attempt.candidate.model
            out = output_cap(self.max_output_tokens, model, self.embeds, DEFAULT_OUTPUT_TOKENS)
            usage = Usage(input_tokens=self.input_tokens, output_tokens=out)
            self.discarded = added(self.discarded, usage)
            self.discarded_cost += cost_of(model, usage)
            self.usage_estimated = True

    def mark(self, step: str) -> None:
        """``step`` ended now (recorded only when the request is traced)."""
        if self.marks is not None:
            self.marks.append((step, time.monotonic_ns()))


# ---- content of FULL tenants' records (spool branch) ----

CONTENT_MAX_CHARS = 32 * 1024
"""Per record, a FULL tenant's request messages together get at most this many characters,
and the answer's text as many again; the rest is cut and the record says ``truncated``."""


def request_content(body: ChatRequest | EmbedRequest) -> dict[str, Any]:
    """The request's messages (role and text; an image is ``[image]``) or embedding inputs,
    capped at ``CONTENT_MAX_CHARS`` in all."""
    budget = CONTENT_MAX_CHARS
    truncated = False
    items: list[dict[str, str]] = []
    if isinstance(body, ChatRequest):
        pairs = [
            (m.role.value, "".join(getattr(p, "text", None) or "[image]" for p in m.content))
            for m in body.messages
        ]
    else:
        pairs = [("input", text) for text in body.inputs]
    for role, text in pairs:
        if len(text) > budget:
            text, truncated = text[:budget], True
        budget -= len(text)
        items.append({"role": role, "text": text})
    return {"request": items, "response": "", "truncated": truncated}


def add_response_content(content: dict[str, Any], text: str) -> None:
    """The answer's text, capped at ``CONTENT_MAX_CHARS``."""
    if len(text) > CONTENT_MAX_CHARS:
        text, content["truncated"] = text[:CONTENT_MAX_CHARS], True
    content["response"] = text


def record_fields(trace: Trace, outcome: Outcome) -> dict[str, Any]:
    """The evidence record of a request, served or refused."""
    total_ms = (time.monotonic() - trace.started) * 1000
    state, caller, plan, candidate = trace.state, trace.caller, trace.plan, trace.candidate
    return {
        "ts": trace.started_wall,
        "kind": trace.kind,
        "correlation_id": trace.correlation_id,
        "tenant_id": caller.tenant.id if caller else "",
        "api_key_id": caller.key_id if caller else "",
        "caller": caller.evidence() if caller else None,
        "snapshot": {"version": state.version, "sha256": state.config.hash_hex} if state else None,
        "policy": {"id": plan.policy_id, "version": plan.policy_version} if plan else None,
        "routing": _routing_record(plan, candidate, trace.attempts, trace.skipped) if plan else None,
        "governance": trace.governance,
        "timings": {
            "total_ms": round(total_ms, 3),
            "dispatch_ms": round(trace.dispatch_ms, 3) if trace.dispatch_ms is not None else None,
            "first_chunk_ms": round(trace.first_chunk_ms, 3) if trace.first_chunk_ms is not None else None,
        },
        "usage": _usage_fields(trace.usage, trace.usage_estimated, trace.capped),
        "cost": _cost_fields(trace.cost),
        "outcome": {"code": outcome.code.name, "message": outcome.message, "error": outcome.kind},
        "request_sha256": trace.request_sha256,
        "response_sha256": trace.response_sha256,
        **({"content": trace.content} if trace.content is not None else {}),
        **({"limit": trace.limit} if trace.limit else {}),
    }


def shadow_fields(trace: Trace, outcome: ShadowOutcome[Any]) -> dict[str, Any]:
    """The evidence of a mirrored call: the request's data went to another deployment too."""
    c = outcome.candidate
    usage = getattr(outcome.result, "usage", None)
    estimated = usage is None and outcome.outcome in CUT_SHORT
    if estimated:
        # The shadow deployment had the request and may bill it in full, as an attempt cut by
        # a timeout or cancelled (``Trace.charge_timeouts``): the input as reserved, the output
        # at its cap.
        out = output_cap(trace.max_output_tokens, c.model, trace.embeds, DEFAULT_OUTPUT_TOKENS)
        usage = Usage(input_tokens=trace.input_tokens, output_tokens=out)
    capped = (
        capped_usage(usage, c.model, trace.max_output_tokens, trace.embeds) if usage is not None else None
    )
    if capped is not None:
        claimed_too_much(trace.correlation_id, c, capped)
        usage = capped.counted
    cost = cost_of(c.model, usage)
    return {
        "ts": time.time(),
        "kind": "shadow",
        "correlation_id": trace.correlation_id,
        "tenant_id": trace.caller.tenant.id if trace.caller else "",
        "api_key_id": trace.caller.key_id if trace.caller else "",
        "caller": trace.caller.evidence() if trace.caller else None,
        "snapshot": {"version": trace.state.version, "sha256": trace.state.config.hash_hex}
        if trace.state
        else None,
        "policy": {"id": trace.plan.policy_id, "version": trace.plan.policy_version} if trace.plan else None,
        "routing": {"served_by": {"model": c.model.alias, "provider": c.provider.id, "deployment": c.key}},
        "timings": {"total_ms": outcome.duration_ms},
        "usage": _usage_fields(usage, estimated, [(c, capped)] if capped is not None else ()),
        "cost": _cost_fields(cost),
        "outcome": {"code": "OK" if outcome.outcome == "ok" else outcome.outcome, "message": outcome.error},
        "request_sha256": trace.request_sha256,
    }


def claimed_too_much(correlation_id: str, candidate: Candidate, capped: Capped) -> None:
    """The WARNING of a usage claim beyond what its request made possible: ids and counts only."""
    reported, counted = capped.reported, capped.counted
    log.warning(
        "request %s: deployment %s claimed usage beyond what the request made possible "
        "(input %d, output %d tokens); counted input %d, output %d (caps: input %s, output %s)",
        correlation_id,
        candidate.key,
        reported.input_tokens,
        reported.output_tokens,
        counted.input_tokens,
        counted.output_tokens,
        capped.max_input_tokens,
        capped.max_output_tokens,
    )


def _usage_fields(
    usage: Usage | None, estimated: bool = False, capped: Sequence[tuple[Candidate, Capped]] = ()
) -> dict[str, Any] | None:
    if usage is None:
        return None
    fields: dict[str, Any] = _token_fields(usage)
    if estimated:
        fields["estimated"] = True
    if capped:
        # Each answer whose claim was capped: the claim verbatim, what was counted of it
        # (min(reported, cap), field by field) and the caps, so a reader can check the sum.
        fields["capped"] = [
            {
                "model": candidate.model.alias,
                "deployment": candidate.key,
                "reported": _token_fields(c.reported),
                "counted": _token_fields(c.counted),
                "max_input_tokens": c.max_input_tokens,
                "max_output_tokens": c.max_output_tokens,
            }
            for candidate, c in capped
        ]
    return fields


def _token_fields(usage: Usage) -> dict[str, Any]:
    # Every count always, 0 included: a record says "none reported", never nothing.
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_input_tokens": usage.cache_write_input_tokens,
        "reasoning_output_tokens": usage.reasoning_output_tokens,
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
                "hedge": a.hedge,
            }
            for a in attempts
        ],
    }
