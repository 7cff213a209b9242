"""Shadow traffic: the request mirrored to the plan's shadow model beside its real attempt.

The mirror's answer is never the caller's. It has an evidence record of its own (its outcome,
usage and cost, tied to the request it mirrors), and its cost counts against the tenant's
budgets once it ends: charged, not reserved before, so a mirror is never what refuses a
request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dataplane.evidence.log import EvidenceLog
from dataplane.pipeline.trace import Trace, shadow_fields
from dataplane.quota import Quotas
from dataplane.routing.candidate import Candidate
from dataplane.routing.dispatch import Dispatcher, ShadowOutcome
from dataplane.routing.query import RoutePlan
from dataplane.snapshot.serving import ServingState

log = logging.getLogger("signalbox.dataplane.pipeline")


def mirror(
    dispatcher: Dispatcher,
    quotas: Quotas | None,
    evidence: EvidenceLog,
    trace: Trace,
    state: ServingState,
    plan: RoutePlan,
    attempt: Callable[[Candidate, float], Awaitable[Any]],
    deadline: float,
) -> None:
    """Mirror the request when ``plan`` says so; its outcome gets its own evidence record."""
    if plan.shadow is None:
        return

    async def mirrored(candidate: Candidate, remaining: float) -> Any:
        # Hold the snapshot's adapters for as long as the mirror runs.
        with state.use():
            return await attempt(candidate, remaining)

    def recorded(outcome: ShadowOutcome[Any]) -> None:
        fields = shadow_fields(trace, outcome)
        caller = trace.caller
        if quotas is not None and caller is not None:
            # The shadow deployment bills the tenant too: its cost counts against the
            # budgets (not reserved before: a mirror is never refused, it is charged).
            quotas.charge(caller.tenant, caller.key_id, caller.key_limits, fields["cost"]["total_nanos"])
        try:
            evidence.append(fields)
        except (OSError, ValueError) as exc:
            log.error("evidence of the shadow call of %s not written: %s", trace.correlation_id, exc)

    dispatcher.shadow(plan, mirrored, deadline=deadline, on_outcome=recorded)
