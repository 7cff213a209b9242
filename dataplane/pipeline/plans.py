"""What a request's route plan means before dispatch: the worst case it may cost (what the
limit step reserves), the plan within an API key's model scopes, and the plan falling back on
what the request's governors refuse."""

from __future__ import annotations

from dataclasses import replace

from dataplane.accounting import output_cap, reserved_input_tokens
from dataplane.config.model import DEFAULT_OUTPUT_TOKENS, Capability
from dataplane.errors import PermissionDenied
from dataplane.pipeline.trace import Trace
from dataplane.routing.query import RoutePlan, RouteQuery
from dataplane.scopes import KeyScope, nothing_in_scope, within_scope


def worst_case(query: RouteQuery, plan: RoutePlan) -> tuple[int, int]:
    """Tokens (input + max output) and nano-USD a request may use at most, over the plan's
    candidates: the output is the request's max tokens, else the model's maximum, else
    ``DEFAULT_OUTPUT_TOKENS``; embeddings have none."""
    tokens = cost = 0
    inputs = reserved_input_tokens(query.estimated_input_tokens)
    embeds = Capability.EMBEDDINGS in query.capabilities
    for candidate in plan.ordered:
        model = candidate.model
        out = output_cap(query.max_output_tokens, model, embeds, DEFAULT_OUTPUT_TOKENS)
        tokens = max(tokens, inputs + out)
        priced = (
            inputs * model.input_price_nanos_per_mtok + out * model.output_price_nanos_per_mtok + 999_999
        ) // 1_000_000
        cost = max(cost, priced)
    return tokens, cost


def within_scope_of(plan: RoutePlan, scope: KeyScope) -> tuple[RoutePlan, PermissionDenied | None]:
    """``plan`` without the candidates (and shadow) outside the key's ``model:`` scopes, with
    the reasons among its drops; and the refusal naming the scopes when none is left."""
    kept, drops = within_scope(scope, plan.ordered)
    shadow = plan.shadow
    if shadow is not None and not scope.allows_model(shadow.model.alias):
        shadow = None
    if drops or shadow is not plan.shadow:
        plan = replace(plan, ordered=kept, dropped=plan.dropped + drops, shadow=shadow)
    return plan, nothing_in_scope(scope, drops) if drops and not kept else None


def governed_plan(plan: RoutePlan, trace: Trace) -> RoutePlan:
    """``plan`` also falling back on what the request's governors refuse (``fallback_on``)."""
    fallback_on = frozenset().union(*(g.fallback_on for g in trace.governors))
    if fallback_on <= plan.retry.fallback_on:
        return plan
    return replace(plan, retry=replace(plan.retry, fallback_on=plan.retry.fallback_on | fallback_on))
