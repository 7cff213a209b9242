"""One request pipeline for every front door.

A front door (the gRPC ``dataplane.api`` today, OpenAI-compatible HTTP next)
converts its wire request into a ``Call`` at its edge and runs one flow:
``Pipeline.answer`` (chat), ``Pipeline.stream`` (chat, streamed) or
``Pipeline.embed``. Each flow takes the same named steps, in order:

    begin          correlation id (the caller's, checked, or a new one), timers
    admit          the snapshot the request runs on start to end (UNAVAILABLE
                   without one: ``snapshot.store``), then the caller (``auth``)
    validate       the front door's decode to plain values (``chat``), then
                   ``validation``
    govern input   each ``GovernanceStep`` sees (and may change or refuse) the request
    route          ``routing.query_for`` -> ``routing.plan_route`` on the snapshot's
                   route table -> without candidates the node cannot use
                   (``routing.usable_plan``)
    limit          one request, its estimated tokens and worst-case cost taken from
                   the tenant's and the key's rate limits and budgets (``quota``:
                   leased quota, no I/O); settled to the real usage at ``record``
    dispatch       ``routing.dispatch.Dispatcher`` within the caller's deadline
                   (retries, fallbacks, breakers; shadow mirroring)
    govern output  each ``GovernanceStep`` sees the answer (or each streamed chunk)
    account        usage -> cost (``accounting``)
    record         exactly one evidence record (``evidence``), whatever the
                   outcome: served, refused at any step, failed or cancelled

It returns a ``Served`` (or, streaming, ``Opened``, chunks, ``Closed``) or raises
``Refused`` with the outcome (``outcome.to_status``) and the evidence id.
"""

from dataplane.deadlines import DEFAULT_DEADLINE_S, DEFAULT_STREAM_DEADLINE_S
from dataplane.pipeline.call import (
    Call,
    Closed,
    GovernanceStep,
    Opened,
    Operation,
    Refused,
    Served,
    StreamEvent,
)
from dataplane.pipeline.steps import Pipeline

__all__ = [
    "DEFAULT_DEADLINE_S",
    "DEFAULT_STREAM_DEADLINE_S",
    "Call",
    "Closed",
    "GovernanceStep",
    "Opened",
    "Operation",
    "Pipeline",
    "Refused",
    "Served",
    "StreamEvent",
]
