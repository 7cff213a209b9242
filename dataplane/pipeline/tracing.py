"""OpenTelemetry traces of requests, opt-in with the standard ``OTEL_*`` variables.

On when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (or
``OTEL_TRACES_EXPORTER=otlp``), unless ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``;
then spans go to the OTLP/HTTP exporter, which reads its own variables (endpoint, headers,
timeout), sampled as ``OTEL_TRACES_SAMPLER`` says, batched off the request path. Off (the
default), the SDK is not even imported and a request pays one attribute check per step.

One request is one SERVER span (``chat {model}`` / ``embeddings {model}``, GenAI semantic
conventions) whose parent is the caller's W3C trace context (``traceparent``/``tracestate``
from gRPC metadata or HTTP headers). Its children: a span per pipeline step (admit, validate,
govern input, route, limit, govern output, account, record; from the times the steps
recorded), and a CLIENT span per upstream attempt, live, whose context goes to the provider as
its own ``traceparent`` header (``dataplane.upstream.TRACE_HEADERS``), so the provider's trace,
if it keeps one, joins ours. Attributes: ``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` and
``output_tokens``, ``gen_ai.usage.reasoning.output_tokens`` (the part of the output the model
spent reasoning, when its provider reports any), ``signalbox.correlation_id``, ``signalbox.evidence_id``, the tenant id, the
outcome; never content, keys or credentials.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from dataplane.upstream import TRACE_HEADERS

if TYPE_CHECKING:
    from dataplane.outcome import Outcome
    from dataplane.pipeline.trace import Trace
    from dataplane.routing.candidate import Candidate

T = TypeVar("T")

OPERATION = {"infer": "chat", "stream": "chat", "embed": "embeddings"}


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return bool(endpoint) or exporter == "otlp"


class RequestTracer:
    """Spans of one node worker's requests."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._tracer = provider.get_tracer("signalbox.dataplane")
        self._propagator = TraceContextTextMapPropagator()
        self._server, self._client = SpanKind.SERVER, SpanKind.CLIENT
        self._status, self._error = Status, StatusCode.ERROR

    @classmethod
    def from_environment(cls, *, node_id: str, worker: int) -> RequestTracer | None:
        """A tracer exporting over OTLP/HTTP when the environment asks for one, else None."""
        if not enabled():
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attributes = {"service.instance.id": f"{node_id}/{worker}"}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = "signalbox-dataplane"
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    def shutdown(self) -> None:
        """Export what is batched, then stop (blocking: call off the event loop)."""
        self._provider.shutdown()

    # ---- a request ----

    def begin(self, trace: Trace, header: Callable[[str], str] | None) -> None:
        """The request's span, child of the caller's trace context when it sent one."""
        carrier: dict[str, str] = {}
        if header is not None:
            for name in ("traceparent", "tracestate"):
                if value := header(name):
                    carrier[name] = value[:512]
        parent = self._propagator.extract(carrier) if carrier else None
        trace.span = self._tracer.start_span(
            OPERATION.get(trace.kind, trace.kind),
            context=parent,
            kind=self._server,
            start_time=time.time_ns() - int((time.monotonic() - trace.started) * 1e9),
            attributes={"signalbox.correlation_id": trace.correlation_id},
        )
        trace.marks = [("begin", time.monotonic_ns())]

    def end(self, trace: Trace, outcome: Outcome, evidence_id: str) -> None:
        """Step spans from the marks, the request's attributes, and its end."""
        span = trace.span
        if span is None:
            return
        trace.span = None
        from opentelemetry.trace import set_span_in_context

        now_mono, now_wall = time.monotonic_ns(), time.time_ns()

        def wall(mono: int) -> int:
            return now_wall - (now_mono - mono)

        context = set_span_in_context(span)
        marks = [*(trace.marks or []), ("record", now_mono)]
        for (_, start), (name, end) in itertools.pairwise(marks):
            if name == "dispatch":
                continue  # the attempts' own spans cover it
            step = self._tracer.start_span(name, context=context, start_time=wall(start))
            step.end(end_time=wall(end))
        operation = OPERATION.get(trace.kind, trace.kind)
        candidate = trace.candidate
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "signalbox.evidence_id": evidence_id,
            "signalbox.outcome": outcome.code.name,
        }
        if trace.caller is not None:
            attributes["signalbox.tenant_id"] = trace.caller.tenant.id
        if candidate is not None:
            attributes["gen_ai.request.model"] = candidate.model.alias
            attributes["gen_ai.response.model"] = candidate.deployment.upstream_model
            attributes["gen_ai.provider.name"] = candidate.provider.type
            span.update_name(f"{operation} {candidate.model.alias}")
        if trace.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = trace.usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = trace.usage.output_tokens
            if trace.usage.reasoning_output_tokens:
                # Part of output_tokens, as the conventions count it; absent where a provider
                # reports none (0 there is "not reported", not "none spent").
                attributes["gen_ai.usage.reasoning.output_tokens"] = trace.usage.reasoning_output_tokens
        span.set_attributes(attributes)
        if outcome.code.name != "OK":
            span.set_attribute("error.type", outcome.kind or outcome.code.name)
            span.set_status(self._status(self._error, outcome.code.name))
        span.end(end_time=now_wall)

    # ---- upstream attempts ----

    def _attempt_span(self, trace: Trace, candidate: Candidate) -> Any:
        from opentelemetry.trace import set_span_in_context

        operation = OPERATION.get(trace.kind, trace.kind)
        upstream_model = candidate.deployment.upstream_model
        span = self._tracer.start_span(
            f"{operation} {upstream_model}",
            context=set_span_in_context(trace.span) if trace.span is not None else None,
            kind=self._client,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": candidate.provider.type,
                "gen_ai.request.model": upstream_model,
                "signalbox.deployment": candidate.key,
            },
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=set_span_in_context(span))
        headers = "".join(f"{name}: {value}\r\n" for name, value in carrier.items()).encode("latin-1")
        return span, headers

    def _failed(self, span: Any, exc: BaseException) -> None:
        span.set_attribute("error.type", type(exc).__name__)
        span.set_status(self._status(self._error, type(exc).__name__))

    def attempt(
        self, trace: Trace, call: Callable[[Candidate, float], Awaitable[T]]
    ) -> Callable[[Candidate, float], Awaitable[T]]:
        """``call`` (one unary upstream attempt) inside its own CLIENT span."""

        async def traced(candidate: Candidate, remaining: float) -> T:
            span, headers = self._attempt_span(trace, candidate)
            token = TRACE_HEADERS.set(headers)
            try:
                return await call(candidate, remaining)
            except BaseException as exc:
                self._failed(span, exc)
                raise
            finally:
                TRACE_HEADERS.reset(token)
                span.end()

        return traced

    def stream_attempt(
        self, trace: Trace, start: Callable[[Candidate, float], AsyncIterator[T]]
    ) -> Callable[[Candidate, float], AsyncIterator[T]]:
        """``start`` (one streamed upstream attempt) inside its own CLIENT span, which ends
        when the stream does."""

        def traced(candidate: Candidate, remaining: float) -> AsyncIterator[T]:
            span, headers = self._attempt_span(trace, candidate)
            token = TRACE_HEADERS.set(headers)
            try:
                stream = start(candidate, remaining)
            finally:
                TRACE_HEADERS.reset(token)
            return _SpannedStream(stream, span, headers, self._failed)

        return traced


class _SpannedStream(AsyncIterator[T]):
    """An upstream stream whose span ends with it; the upstream request (sent on the first
    ``__anext__``) carries the span's ``traceparent``."""

    def __init__(
        self,
        stream: AsyncIterator[T],
        span: Any,
        headers: bytes,
        failed: Callable[[Any, BaseException], None],
    ) -> None:
        self._stream, self._span, self._headers, self._failed = stream, span, headers, failed
        self._ended = False

    def __aiter__(self) -> _SpannedStream[T]:
        return self

    async def __anext__(self) -> T:
        token = TRACE_HEADERS.set(self._headers)
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            self._end()
            raise
        except BaseException as exc:
            self._failed(self._span, exc)
            self._end()
            raise
        finally:
            TRACE_HEADERS.reset(token)

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._span.end()
