"""The InferService servicer: thin handlers that run the pipeline's steps.

Each handler takes the serving state once (``Pipeline.admit``) and runs to the
end on it; every outcome, including refusals and cancellations, yields exactly
one evidence record before the caller hears back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from dataplane.api import convert, validation
from dataplane.api.pipeline import Pipeline, Trace, routing_to_proto
from dataplane.api.status import CORRELATION_HEADER, OK, Outcome, abort, to_status
from dataplane.auth import Caller
from dataplane.chat import ChatRequest, ChatResponse, EmbedResponse, StreamChunk, Usage
from dataplane.config.model import Capability
from dataplane.config.store import ServingState
from dataplane.errors import EvidenceUnavailable
from dataplane.routing.dispatch import DispatchFailed
from dataplane.routing.router import Candidate, RoutePlan, RouteQuery
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc

log = logging.getLogger("signalbox.dataplane.api")

Context = grpc.aio.ServicerContext[Any, Any]
Response = TypeVar("Response", infer_pb2.InferResponse, infer_pb2.EmbedResponse)
Result = TypeVar("Result")

_CANCELLED = Outcome(grpc.StatusCode.CANCELLED, "caller cancelled the request", "Cancelled")


def estimate_tokens(chat: ChatRequest) -> int:
    # A rough figure for routing only (about four characters per token); never billed.
    return sum(len(m.text) for m in chat.messages) // 4


class InferService(infer_pb2_grpc.InferServiceServicer):
    """Serves ``signalbox.api.infer.v1.InferService`` over a node's pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._p = pipeline

    # ---- shared steps ----

    async def _fail(self, trace: Trace, exc: BaseException, context: Context) -> NoReturn:
        """Record and report a failed request."""
        if isinstance(exc, DispatchFailed):
            trace.attempts, trace.skipped = exc.attempts, exc.skipped
        outcome = to_status(exc)
        if outcome.code is grpc.StatusCode.INTERNAL:
            log.error("request %s failed unexpectedly", trace.correlation_id, exc_info=exc)
        evidence_id = self._record_refusal(trace, outcome)
        await abort(context, outcome, trace.correlation_id, evidence_id)

    def _record_refusal(self, trace: Trace, outcome: Outcome) -> str:
        """Record a refused or cancelled request; its record id, or "" if it could not be written.

        A refusal's own outcome stands even then (the failure is logged where it happens).
        """
        try:
            return self._p.record(trace, outcome)
        except EvidenceUnavailable:
            return ""

    async def _record_answer(self, trace: Trace, context: Context) -> str:
        """Record a served request; without its record the answer is not sent."""
        try:
            return self._p.record(trace, OK)
        except EvidenceUnavailable as exc:
            await abort(context, to_status(exc), trace.correlation_id)

    async def _unary(
        self,
        kind: str,
        request: infer_pb2.InferRequest | infer_pb2.EmbedRequest,
        context: Context,
        handle: Callable[[Trace, ServingState, Caller], Awaitable[Response]],
    ) -> Response:
        """Admit, run ``handle`` on one serving state, record, answer."""
        p = self._p
        metadata = context.invocation_metadata()
        trace = p.begin(kind, request, request.correlation_id, metadata)
        try:
            state, caller = p.admit(trace, metadata, request.task)
            with state.use():
                response = await handle(trace, state, caller)
            trace.response_sha256 = hashlib.sha256(response.SerializeToString()).hexdigest()
        except asyncio.CancelledError:
            self._record_refusal(trace, _CANCELLED)
            raise
        except Exception as exc:
            await self._fail(trace, exc, context)
        response.evidence_id = await self._record_answer(trace, context)
        context.set_trailing_metadata(((CORRELATION_HEADER, trace.correlation_id),))
        return response

    async def _dispatch(
        self,
        trace: Trace,
        plan: RoutePlan,
        attempt: Callable[[Candidate, float], Awaitable[Result]],
        deadline: float,
    ) -> tuple[Result, Candidate]:
        started = time.monotonic()
        result, candidate, attempts = await self._p.dispatcher.call(
            plan, attempt, deadline=deadline, skipped=trace.skipped
        )
        trace.dispatch_ms = (time.monotonic() - started) * 1000
        trace.candidate, trace.attempts = candidate, attempts
        return result, candidate

    def _plan_chat(
        self,
        trace: Trace,
        state: ServingState,
        caller: Caller,
        request: infer_pb2.InferRequest,
        *,
        streaming: bool,
    ) -> tuple[ChatRequest, RoutePlan]:
        """Convert and validate a chat request, then route it."""
        chat = convert.chat_request_from_proto(request)
        validation.validate_chat(chat)
        query = RouteQuery(
            tenant=caller.tenant,
            model=request.model,
            capabilities=convert.capabilities_needed(request, chat),
            task=request.task,
            data_classification=convert.data_class(request.data_classification),
            metadata=request.metadata,
            estimated_input_tokens=estimate_tokens(chat),
            max_output_tokens=chat.params.max_output_tokens,
            streaming=streaming,
            request_id=trace.correlation_id,
        )
        return chat, self._p.route(trace, state, query, chat.params.max_output_tokens)

    # ---- RPCs ----

    async def Infer(self, request: infer_pb2.InferRequest, context: Context) -> infer_pb2.InferResponse:
        async def handle(trace: Trace, state: ServingState, caller: Caller) -> infer_pb2.InferResponse:
            chat, plan = self._plan_chat(trace, state, caller, request, streaming=False)

            async def attempt(candidate: Candidate, remaining: float) -> ChatResponse:
                adapter = state.adapters[candidate.provider.id]
                return await adapter.complete(candidate.deployment.upstream_model, chat, timeout=remaining)

            deadline = self._p.deadline(context)
            self._p.shadow(trace, state, plan, attempt, deadline)
            result, candidate = await self._dispatch(trace, plan, attempt, deadline)
            cost = self._p.account(trace, candidate, result.usage)
            return infer_pb2.InferResponse(
                message=convert.message_to_proto(result.message),
                finish_reason=convert.FINISH_TO_PROTO[result.finish_reason],
                usage=convert.usage_to_proto(result.usage),
                cost=cost.to_proto(),
                model=candidate.model.alias,
                provider=candidate.provider.name or candidate.provider.id,
                routing=routing_to_proto(plan, candidate, trace.attempts),
                correlation_id=trace.correlation_id,
                snapshot_version=state.version,
            )

        return await self._unary("infer", request, context, handle)

    async def Embed(self, request: infer_pb2.EmbedRequest, context: Context) -> infer_pb2.EmbedResponse:
        async def handle(trace: Trace, state: ServingState, caller: Caller) -> infer_pb2.EmbedResponse:
            embed = convert.embed_request_from_proto(request)
            validation.validate_embed(embed)
            query = RouteQuery(
                tenant=caller.tenant,
                model=request.model,
                capabilities=frozenset({Capability.EMBEDDINGS}),
                task=request.task,
                data_classification=convert.data_class(request.data_classification),
                metadata=request.metadata,
                estimated_input_tokens=sum(len(t) for t in embed.inputs) // 4,
                embeddings=True,
                request_id=trace.correlation_id,
            )
            plan = self._p.route(trace, state, query)

            async def attempt(candidate: Candidate, remaining: float) -> EmbedResponse:
                adapter = state.adapters[candidate.provider.id]
                return await adapter.embed(candidate.deployment.upstream_model, embed, timeout=remaining)

            result, candidate = await self._dispatch(trace, plan, attempt, self._p.deadline(context))
            cost = self._p.account(trace, candidate, result.usage)
            response = infer_pb2.EmbedResponse(
                usage=convert.usage_to_proto(result.usage),
                cost=cost.to_proto(),
                model=candidate.model.alias,
                provider=candidate.provider.name or candidate.provider.id,
                routing=routing_to_proto(plan, candidate, trace.attempts),
                correlation_id=trace.correlation_id,
                snapshot_version=state.version,
            )
            for i, vector in enumerate(result.vectors):
                response.embeddings.add(index=i, values=vector)
            return response

        return await self._unary("embed", request, context, handle)

    async def InferStream(
        self, request: infer_pb2.InferRequest, context: Context
    ) -> AsyncIterator[infer_pb2.InferStreamEvent]:
        p = self._p
        metadata = context.invocation_metadata()
        trace = p.begin("stream", request, request.correlation_id, metadata)
        stream: AsyncIterator[StreamChunk] | None = None
        try:
            state, caller = p.admit(trace, metadata, request.task)
            with state.use():
                chat, plan = self._plan_chat(trace, state, caller, request, streaming=True)

                def start(candidate: Candidate, remaining: float) -> AsyncIterator[StreamChunk]:
                    adapter = state.adapters[candidate.provider.id]
                    return adapter.stream(candidate.deployment.upstream_model, chat, timeout=remaining)

                dispatched = time.monotonic()
                chunk, stream, candidate, attempts = await p.dispatcher.open_stream(
                    plan, start, deadline=p.deadline(context), skipped=trace.skipped
                )
                trace.first_chunk_ms = (time.monotonic() - dispatched) * 1000
                trace.candidate, trace.attempts = candidate, attempts
                yield infer_pb2.InferStreamEvent(
                    start=infer_pb2.StreamStart(
                        correlation_id=trace.correlation_id,
                        model=candidate.model.alias,
                        provider=candidate.provider.name or candidate.provider.id,
                    )
                )
                digest = hashlib.sha256()
                finish = None
                usage: Usage | None = None
                while True:
                    # Each upstream chunk goes out as it arrives: nothing is buffered.
                    if chunk.text or chunk.tool_calls:
                        event = convert.delta_to_proto(chunk)
                        digest.update(event.SerializeToString())
                        yield event
                    if chunk.finish_reason is not None:
                        finish = chunk.finish_reason
                    if chunk.usage is not None:
                        usage = chunk.usage
                    try:
                        chunk = await anext(stream)
                    except StopAsyncIteration:
                        break
                trace.dispatch_ms = (time.monotonic() - dispatched) * 1000
                cost = p.account(trace, candidate, usage)
                trace.response_sha256 = digest.hexdigest()
                end = infer_pb2.StreamEnd(
                    finish_reason=convert.FINISH_TO_PROTO[finish],
                    usage=convert.usage_to_proto(usage),
                    cost=cost.to_proto(),
                    routing=routing_to_proto(plan, candidate, attempts),
                    snapshot_version=state.version,
                )
        except asyncio.CancelledError:
            self._record_refusal(trace, _CANCELLED)
            raise
        except Exception as exc:
            await self._fail(trace, exc, context)
        finally:
            # Closing the iterator closes the upstream HTTP stream (also on cancel).
            if stream is not None:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
        end.evidence_id = await self._record_answer(trace, context)
        context.set_trailing_metadata(((CORRELATION_HEADER, trace.correlation_id),))
        yield infer_pb2.InferStreamEvent(end=end)
