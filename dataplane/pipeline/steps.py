"""The pipeline's steps and the three flows built from them (answer, stream, embed).

See the package docstring for the order. Every flow ends in ``_record`` exactly
once, whatever happens: served, refused at any step, failed, or cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, NoReturn, TypeVar

import grpc

from dataplane.accounting import Cost, added, cost_of, most, reserved_input_tokens
from dataplane.auth import Caller, authenticate
from dataplane.chat import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    StreamChunk,
    Usage,
)
from dataplane.config.model import Capability
from dataplane.deadlines import DEFAULT_DEADLINE_S, DEFAULT_STREAM_DEADLINE_S
from dataplane.errors import (
    EvidenceSpoolFull,
    EvidenceUnavailable,
    InvalidRequest,
    LimitExceeded,
    NoEligibleCandidate,
    QuotaUnavailable,
    fresh,
)
from dataplane.evidence.log import EvidenceLog
from dataplane.evidence.spool import Spool
from dataplane.governance.errors import NotCertified
from dataplane.governance.held import held_whole, holds
from dataplane.outcome import CANCELLED, OK, Outcome, to_status
from dataplane.pipeline.call import (
    EVIDENCE_KIND,
    Body,
    Call,
    Closed,
    GovernanceStep,
    Opened,
    Operation,
    Refused,
    Result,
    Served,
    StreamEvent,
)
from dataplane.pipeline.digests import Assembler, answer_digest, embedding_digest
from dataplane.pipeline.metrics import RequestMetrics
from dataplane.pipeline.mirror import mirror
from dataplane.pipeline.plans import governed_plan, within_scope_of, worst_case
from dataplane.pipeline.trace import (
    Trace,
    add_response_content,
    record_fields,
    request_content,
)
from dataplane.pipeline.tracing import RequestTracer
from dataplane.quota import Quotas
from dataplane.random_ids import token_hex
from dataplane.routing.candidate import Candidate
from dataplane.routing.dispatch import Dispatcher
from dataplane.routing.planner import plan_route, usable_plan
from dataplane.routing.query import RoutePlan, RouteQuery, query_for
from dataplane.snapshot.serving import ServingState
from dataplane.snapshot.store import SnapshotStore
from dataplane.validation import check_schemas, validate
from dataplane.validation import correlation_id as checked_correlation_id
from signalbox.logs import bind_request

log = logging.getLogger("signalbox.dataplane.pipeline")


R = TypeVar("R")


class Pipeline:
    """The request steps bound to one node's store, dispatcher, evidence log and governance."""

    def __init__(
        self,
        store: SnapshotStore,
        dispatcher: Dispatcher,
        evidence: EvidenceLog,
        *,
        governance: Sequence[GovernanceStep] = (),
        default_deadline: float = DEFAULT_DEADLINE_S,
        stream_deadline: float = DEFAULT_STREAM_DEADLINE_S,
        spool: Spool | None = None,
        quotas: Quotas | None = None,
        metrics: RequestMetrics | None = None,
        tracer: RequestTracer | None = None,
    ) -> None:
        """``spool``: the node's evidence spool, whose bound each tenant's policy answers
        (None: unbounded); ``quotas``: the node's leased rate limits and budgets (None: limits
        are not enforced, e.g. an air-gapped node with no control plane to lease from)."""
        self.spool = spool
        self.quotas = quotas
        self.store = store
        self.dispatcher = dispatcher
        self.evidence = evidence
        self.governance = tuple(governance)
        self.default_deadline = default_deadline
        self.stream_deadline = stream_deadline
        self.metrics = metrics
        """The node's request metrics (None: metrics are off, and cost nothing)."""
        self.tracer = tracer
        """Spans of each request (None: tracing is off, and costs nothing)."""

    # ---- the flows ----

    async def answer(self, call: Call[ChatRequest]) -> Served[ChatResponse]:
        """One chat answer (unary)."""

        async def respond(
            trace: Trace, state: ServingState, chat: ChatRequest, plan: RoutePlan
        ) -> tuple[ChatResponse, Candidate]:
            async def attempt(candidate: Candidate, remaining: float) -> ChatResponse:
                adapter = state.adapters[candidate.provider.id]
                return await adapter.complete(candidate.deployment.upstream_model, chat, timeout=remaining)

            traced: Callable[[Candidate, float], Awaitable[ChatResponse]] = attempt
            if self.tracer is not None:
                traced = self.tracer.attempt(trace, attempt)

            async def governed(candidate: Candidate, remaining: float) -> ChatResponse:
                response = await traced(candidate, remaining)
                _check_answer(trace, chat, candidate, response)
                return response

            deadline = self._deadline(trace, call)
            mirror(self.dispatcher, self.quotas, self.evidence, trace, state, plan, attempt, deadline)
            if not trace.governors:
                response, candidate = await self._dispatch(trace, plan, traced, deadline)
                trace.mark("govern output")
                return response, candidate
            response, candidate = await self._dispatch(trace, governed_plan(plan, trace), governed, deadline)
            answered = response
            try:
                for governor in trace.governors:
                    response = governor.govern_output(response, trace.governance)
            except Exception:
                trace.discard(candidate, answered)
                raise
            trace.mark("govern output")
            return response, candidate

        return await self._unary(call, respond, answer_digest)

    async def embed(self, call: Call[EmbedRequest]) -> Served[EmbedResponse]:
        """Embedding vectors."""

        async def respond(
            trace: Trace, state: ServingState, body: EmbedRequest, plan: RoutePlan
        ) -> tuple[EmbedResponse, Candidate]:
            async def attempt(candidate: Candidate, remaining: float) -> EmbedResponse:
                adapter = state.adapters[candidate.provider.id]
                return await adapter.embed(candidate.deployment.upstream_model, body, timeout=remaining)

            upstream: Callable[[Candidate, float], Awaitable[EmbedResponse]] = attempt
            if self.tracer is not None:
                upstream = self.tracer.attempt(trace, attempt)
            return await self._dispatch(trace, plan, upstream, self._deadline(trace, call))

        return await self._unary(call, respond, embedding_digest)

    async def _unary(
        self,
        call: Call[Body],
        respond: Callable[[Trace, ServingState, Body, RoutePlan], Awaitable[tuple[Result, Candidate]]],
        digest: Callable[[Result], str],
    ) -> Served[Result]:
        """begin, admit, validate, govern, route (``_prepare``), then ``respond`` (dispatch and
        govern the answer), account and record: the skeleton every unary flow shares."""
        trace = self._begin(call)
        try:
            state, caller = self._admit(trace, call)
            trace.mark("admit")
            with state.use():
                body, plan = await self._prepare(trace, state, caller, call)
                result, candidate = await respond(trace, state, body, plan)
                if (usage := trace.count(candidate, result.usage)) is not result.usage:
                    result = replace(result, usage=usage)  # served as billed: capped (``Trace.count``)
                cost = self._account(trace, candidate, usage)
                trace.response_sha256 = digest(result)
                if trace.content is not None and isinstance(result, ChatResponse):
                    add_response_content(trace.content, _concealed(trace, result.message.text))
        except asyncio.CancelledError:
            trace.charge_timeouts()  # what the upstream had when the caller went away
            self._record_refusal(trace, CANCELLED)
            raise
        except Exception as exc:
            self._refuse(trace, exc)
        evidence_id = self._record_answer(trace)
        return Served(
            result, plan, candidate, trace.attempts, cost, trace.correlation_id, state.version, evidence_id
        )

    async def stream(self, call: Call[ChatRequest]) -> AsyncGenerator[StreamEvent, None]:
        """One chat answer as it is generated: ``Opened``, then each upstream chunk as
        it arrives (nothing is buffered, but what output rules hold back and an answer whose
        contract may retry, ``governance.held``), then ``Closed`` once the evidence is written.

        A caller that goes away (the task cancelled, or this iterator closed early)
        is recorded as CANCELLED and the upstream stream is closed. Once the upstream has
        started answering, the request is charged whatever ends it (``_account_stream``).
        """
        trace = self._begin(call)
        upstream: AsyncIterator[StreamChunk] | None = None
        assembled = Assembler()
        usage: Usage | None = None
        try:
            state, caller = self._admit(trace, call)
            trace.mark("admit")
            with state.use():
                chat, plan = await self._prepare(trace, state, caller, call)

                def start(candidate: Candidate, remaining: float) -> AsyncIterator[StreamChunk]:
                    adapter = state.adapters[candidate.provider.id]
                    return adapter.stream(candidate.deployment.upstream_model, chat, timeout=remaining)

                opener: Callable[[Candidate, float], AsyncIterator[StreamChunk]] = start
                if self.tracer is not None:
                    opener = self.tracer.stream_attempt(trace, start)
                held = holds(chat, frozenset().union(*(g.fallback_on for g in trace.governors)))
                if held:  # read whole and checked before it goes out, so it can still fall back
                    opener = held_whole(opener, partial(_check_answer, trace, chat))
                    plan = governed_plan(plan, trace)
                dispatched = time.monotonic()
                trace.attempts = []  # as ``_dispatch``: known (and counted) if the caller goes away
                chunk, upstream, candidate, attempts = await self.dispatcher.open_stream(
                    plan,
                    opener,
                    deadline=self._deadline(trace, call, self.stream_deadline),
                    skipped=trace.skipped,
                    attempts=trace.attempts,
                )
                trace.first_chunk_ms = (time.monotonic() - dispatched) * 1000
                trace.candidate, trace.attempts = candidate, attempts
                trace.charge_timeouts()
                yield Opened(trace.correlation_id, candidate, trace.record_id)
                governed = [g.stream(trace.governance) for g in trace.governors]
                while True:
                    for stream_governor in governed:
                        chunk = stream_governor.feed(chunk)
                    assembled.add(chunk)
                    if chunk.text or chunk.tool_calls:
                        yield chunk
                    if chunk.usage is not None:
                        usage = most(usage, chunk.usage)
                    try:
                        chunk = await anext(upstream)
                    except StopAsyncIteration:
                        break
                for i, stream_governor in enumerate(governed):
                    # What a governor held back to the end, through the governors after it.
                    tail = stream_governor.finish()
                    if tail is None:
                        continue
                    for later in governed[i + 1 :]:
                        tail = later.feed(tail)
                    assembled.add(tail)
                    if tail.text or tail.tool_calls:
                        yield tail
                if trace.governors and chat.response_format is not None and not held:
                    whole = assembled.response()
                    for governor in trace.governors:
                        governor.check_answer(
                            chat, whole, candidate.model.alias, trace.governance, streamed=True
                        )
                trace.dispatch_ms = (time.monotonic() - dispatched) * 1000
                usage = trace.count(candidate, usage)  # as billed: ``Closed`` says it
                cost = self._account_stream(trace, usage, assembled)
                trace.response_sha256 = assembled.digest()
                if trace.content is not None:
                    add_response_content(trace.content, _concealed(trace, "".join(assembled.text)))
        except (asyncio.CancelledError, GeneratorExit):
            trace.charge_timeouts()  # an attempt the upstream had before any chunk came
            self._account_stream(trace, usage, assembled)
            self._record_refusal(trace, CANCELLED)
            raise
        except Exception as exc:
            self._account_stream(trace, usage, assembled)
            self._refuse(trace, exc)
        finally:
            # Closing the iterator closes the upstream HTTP stream (also on cancel).
            if upstream is not None:
                aclose = getattr(upstream, "aclose", None)
                if aclose is not None:
                    await aclose()
        evidence_id = self._record_answer(trace)
        yield Closed(
            assembled.finish,
            usage,
            cost,
            plan,
            candidate,
            attempts,
            trace.correlation_id,
            state.version,
            evidence_id,
        )

    # ---- steps ----

    def _begin(self, call: Call[Any]) -> Trace:
        """``_new_trace``, and the request's span when it is traced."""
        trace = self._new_trace(call)
        if self.tracer is not None:
            self.tracer.begin(trace, call.header)
        return trace

    def _new_trace(self, call: Call[Any]) -> Trace:
        """Correlation id and timers. An invalid caller-supplied id is replaced by a
        generated one (so the refusal can still be correlated) and reported after
        authentication."""
        now = time.monotonic()
        kind = EVIDENCE_KIND[call.operation]
        if not call.correlation_id:
            # Both ids from one draw of 32 random bytes.
            ids = token_hex(32)
            trace = Trace(kind, ids[:32], now, time.time(), call.request_sha256, record_id=ids[32:])
            bind_request(trace.correlation_id)
            return trace
        try:
            supplied = checked_correlation_id(call.correlation_id, call.correlation_field)
        except InvalidRequest as exc:
            trace = Trace(kind, token_hex(16), now, time.time(), call.request_sha256)
            # Kept without the traceback through this frame (which holds the trace: a cycle).
            trace.invalid_correlation_id = exc.with_traceback(None)
            bind_request(trace.correlation_id)
            return trace
        bind_request(supplied)
        return Trace(kind, supplied, now, time.time(), call.request_sha256)

    def _admit(self, trace: Trace, call: Call[Any]) -> tuple[ServingState, Caller]:
        """The snapshot this request runs on, then the caller."""
        state = self.store.require()
        trace.state = state
        caller = authenticate(
            state.config, call.api_key, trace.started_wall, call.peer_certificate, call.peer_refusal
        )
        trace.caller = caller
        bind_request(trace.correlation_id, caller.tenant.id)
        if trace.invalid_correlation_id is not None:
            # Reported after authentication so an anonymous caller learns nothing else.
            raise fresh(trace.invalid_correlation_id)
        caller.scope.check_operation(call.operation.value)
        if self.spool is not None and self.spool.refuses(caller.tenant.spool_refuse):
            raise EvidenceSpoolFull()
        return state, caller

    async def _prepare(
        self, trace: Trace, state: ServingState, caller: Caller, call: Call[Body]
    ) -> tuple[Body, RoutePlan]:
        """Validate (schemas not seen before are checked off the event loop), govern the
        input, route."""
        body, hints = call.decode()
        if caller.metadata:
            # What the identity says (JWT claims) wins over what the request claims.
            hints = replace(hints, metadata={**hints.metadata, **caller.metadata})
        validate(body)
        if isinstance(body, ChatRequest):
            streams = call.operation is Operation.STREAM
            deadline = self._deadline(trace, call, self.stream_deadline if streams else None)
            await check_schemas(body, tenant=caller.tenant.id, timeout=deadline - time.monotonic())
        trace.mark("validate")
        scope = caller.scope
        scope.check_task(hints.task)
        classified_by = ""
        for step in self.governance:
            governor = step.begin(state.config, caller.tenant)
            if governor is None:
                continue
            trace.governors.append(governor)
            governed = governor.govern_input(body, trace.governance)
            if not isinstance(governed, type(body)):
                raise TypeError(f"governance step {type(step).__name__} changed the request's type")
            body = governed
            if governor.data_class > hints.data_classification:
                hints = replace(hints, data_classification=governor.data_class)
                classified_by = governor.classified_by
        if caller.tenant.evidence_full:
            # After governance: what was masked or redacted is not kept either.
            trace.content = request_content(body)
        trace.mark("govern input")
        query = query_for(
            caller.tenant,
            body,
            hints,
            streaming=call.operation is Operation.STREAM,
            request_id=trace.correlation_id,
        )
        trace.input_tokens = reserved_input_tokens(query.estimated_input_tokens)
        trace.max_output_tokens = query.max_output_tokens
        trace.embeds = Capability.EMBEDDINGS in query.capabilities
        if query.model:
            scope.check_model(query.model)
        try:
            trace.plan = plan_route(state.routes, query, self.dispatcher.health)
        except NoEligibleCandidate as exc:
            if classified_by:
                raise NotCertified(classified_by, query.data_classification.name.lower()) from exc
            raise
        if not scope.unrestricted:
            trace.plan, refused = within_scope_of(trace.plan, scope)
            if refused is not None:
                try:
                    raise refused
                finally:
                    del refused  # its traceback holds this frame: not the other way round too
        trace.plan = plan = usable_plan(trace.plan, query, state.unusable)
        trace.mark("route")
        if self.quotas is not None:
            await self._limit(trace, caller, query, plan)
            trace.mark("limit")
        return body, plan

    async def _limit(self, trace: Trace, caller: Caller, query: RouteQuery, plan: RoutePlan) -> None:
        """Reserve one request, its estimated tokens (input + max output) and its worst-case
        cost (the dearest candidate of the plan) from the tenant's and the key's limits;
        settled to the real usage when the request is recorded (``_record``)."""
        assert self.quotas is not None
        if caller.tenant.limits is None and caller.key_limits is None:
            return
        tokens, cost = worst_case(query, plan)
        try:
            trace.reservation = await self.quotas.reserve(
                caller.tenant, caller.key_id, caller.key_limits, tokens, cost
            )
        except (LimitExceeded, QuotaUnavailable) as exc:
            trace.limit = exc.limit
            raise

    def _deadline(self, trace: Trace, call: Call[Any], default: float | None = None) -> float:
        """Absolute ``time.monotonic()`` deadline for dispatch; without the caller's,
        ``default`` seconds (the unary budget when None) from the request's start.

        A little is kept back from the caller's own deadline (a tenth of it, at most
        200 ms) so the node's DEADLINE_EXCEEDED (with the correlation id) reaches the
        caller before it gives up on its own, even from a node whose loop is briefly
        busy (50 ms was not always enough on a loaded machine).
        """
        remaining = call.timeout
        if remaining is None:
            return trace.started + (self.default_deadline if default is None else default)
        return trace.started + remaining - min(0.2, remaining * 0.1)

    async def _dispatch(
        self,
        trace: Trace,
        plan: RoutePlan,
        attempt: Callable[[Candidate, float], Awaitable[R]],
        deadline: float,
    ) -> tuple[R, Candidate]:
        started = time.monotonic()
        # Every attempt ends in a provider adapter's call, which keeps the deadline it is given
        # (``ProviderAdapter``): no timer of the dispatcher's per attempt.
        # Appended to as attempts end: a request cancelled meanwhile still knows them (and
        # the one in flight), to record and count (``_unary``).
        trace.attempts = []
        result, candidate, attempts = await self.dispatcher.call(
            plan,
            attempt,
            deadline=deadline,
            skipped=trace.skipped,
            keeps_deadline=True,
            attempts=trace.attempts,
        )
        trace.dispatch_ms = (time.monotonic() - started) * 1000
        trace.candidate, trace.attempts = candidate, attempts
        trace.charge_timeouts()
        trace.mark("dispatch")
        return result, candidate

    def _account(self, trace: Trace, candidate: Candidate, usage: Usage | None) -> Cost:
        """The served answer's usage and cost, and those of the answers discarded before it."""
        trace.cost = cost_of(candidate.model, usage) + trace.discarded_cost
        trace.usage = usage if trace.discarded is None else added(trace.discarded, usage or Usage())
        trace.mark("account")
        return trace.cost

    def _account_stream(self, trace: Trace, usage: Usage | None, assembled: Assembler) -> Cost:
        """A stream's cost however it ended, once an upstream answered. Without the provider's
        usage (the stream cut before its usage chunk, or an upstream that sends none) the
        provider was still paid: the node's estimate, never nothing (a caller hanging up just
        before the end would otherwise stream past every budget and tokens-per-minute limit)."""
        candidate = trace.candidate
        if candidate is None or trace.usage is not None:
            return trace.cost
        if usage is None:
            usage = trace.estimate(candidate, assembled.chars())
        else:  # the provider's claim, capped (counted once: a counted one is within its caps)
            usage = trace.count(candidate, usage)
        return self._account(trace, candidate, usage)

    # ---- record: exactly one evidence record per request ----

    def _refuse(self, trace: Trace, exc: Exception) -> NoReturn:
        """Record a failed request and end it with its outcome."""
        attempts = getattr(exc, "attempts", None)
        if attempts is not None:
            trace.attempts, trace.skipped = attempts, getattr(exc, "skipped", [])
            trace.charge_timeouts()
        outcome = to_status(exc)
        if outcome.code is grpc.StatusCode.INTERNAL:
            log.error("request %s failed unexpectedly", trace.correlation_id, exc_info=exc)
        evidence_id = self._record_refusal(trace, outcome)
        raise Refused(outcome, trace.correlation_id, evidence_id) from exc

    def _record_refusal(self, trace: Trace, outcome: Outcome) -> str:
        """Record a refused or cancelled request; its record id, or "" if it could not be
        written (the refusal's own outcome stands; the failure is logged where it happens)."""
        try:
            return self._record(trace, outcome)
        except EvidenceUnavailable as exc:
            log.error("evidence record of %s not written: %s", trace.correlation_id, exc.__cause__)
            return ""

    def _record_answer(self, trace: Trace) -> str:
        """Record a served request; without its record the answer is not sent."""
        try:
            return self._record(trace, OK)
        except EvidenceUnavailable as exc:
            log.error("evidence record of %s not written: %s", trace.correlation_id, exc.__cause__)
            raise Refused(to_status(exc), trace.correlation_id) from exc

    def _record(self, trace: Trace, outcome: Outcome) -> str:
        if trace.recorded is not None:
            return trace.recorded
        trace.recorded = ""
        if trace.usage is None and trace.discarded is not None:
            # Refused, yet upstreams answered (governance refused what they said): paid for.
            trace.usage, trace.cost = trace.discarded, trace.discarded_cost
        if trace.reservation is not None and self.quotas is not None:
            usage = trace.usage
            used = usage.input_tokens + usage.output_tokens if usage is not None else 0
            self.quotas.settle(trace.reservation, used, trace.cost.total_nanos)
        try:
            record_id = self.evidence.append(record_fields(trace, outcome), trace.record_id)
        except (OSError, ValueError) as exc:  # ValueError: the file was closed under us
            if self.tracer is not None:
                self.tracer.end(trace, outcome, "")
            raise EvidenceUnavailable("node cannot write evidence; request not served") from exc
        trace.recorded = record_id
        if self.tracer is not None:
            self.tracer.end(trace, outcome, record_id)
        if self.metrics is not None:
            # Counted once its record is written: metrics and evidence count the same requests.
            self.metrics.observe(trace, outcome, time.monotonic)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s evidence=%s", trace.kind, trace.correlation_id, outcome.code.name, record_id)
        return record_id


def _concealed(trace: Trace, text: str) -> str:
    """An answer's text as a FULL tenant's evidence may keep it: masked values stay masked."""
    for governor in trace.governors:
        text = governor.conceal(text)
    return text


def _check_answer(trace: Trace, chat: ChatRequest, candidate: Candidate, response: ChatResponse) -> None:
    try:
        for governor in trace.governors:
            governor.check_answer(chat, response, candidate.model.alias, trace.governance)
    except Exception:
        trace.discard(candidate, response)
        raise
