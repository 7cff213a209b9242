"""The OpenAI-compatible HTTP front door: ``/v1/chat/completions``, ``/v1/embeddings``,
``/v1/models`` (and ``/v1/models/{model}``) over the node's one pipeline; ``/healthz`` and
``/readyz`` for load balancers and probes.

An application moves behind Signalbox by changing its SDK's ``base_url`` and ``api_key``:
the request runs the same steps as on gRPC (identity, policy, routing, dispatch,
governance, accounting, exactly one evidence record). Every answer carries
``x-request-id`` (the correlation id: the caller's own when it sent a valid one, else a new
one). Every answer of those requests, served or refused, also carries ``x-evidence-id`` (the
record's id, known before a stream starts); what is answered before the pipeline (the
server's refusals, unknown paths and methods), the model list and the probes run no model
and write no record.

Errors use OpenAI's error object with the HTTP status its SDKs map to their exception
types (``STATUS_OF``); the message is the pipeline's, which never carries a provider's raw
body. A refused stream that has not started gets an ordinary error answer; one that fails
after its first event ends with an SSE ``error`` event, as OpenAI does.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import orjson

from dataplane.auth import authenticate
from dataplane.edge import openai as edge
from dataplane.edge import openai_answers as answers
from dataplane.errors import InvalidRequest, SignalboxError, shown
from dataplane.http.messages import Request, Response
from dataplane.outcome import Outcome, caller_error, to_status
from dataplane.pipeline import Call, Closed, Opened, Operation, Pipeline, Refused
from dataplane.routing.health import DEFAULT_MAX_RETRY_AFTER_S

log = logging.getLogger("signalbox.dataplane.http")

_JSON = (b"content-type", b"application/json")
_SSE = ((b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"))

STATUS_OF: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""The pipeline's outcome (gRPC's canonical codes) as an HTTP status."""

_UPSTREAM_KINDS = frozenset(
    {
        "AllCandidatesFailed",
        "UpstreamUnavailable",
        "UpstreamAuthFailed",
        "UpstreamProtocolError",
        "UpstreamModelNotFound",
        "Overloaded",
        "ProviderError",
    }
)
"""Failures of the model providers, not of the node: 502 Bad Gateway rather than 503."""

_CODES = {
    "NotFound": "model_not_found",
    "ContextTooLong": "context_length_exceeded",
    "RateLimited": "rate_limit_exceeded",
    "QuotaExhausted": "insufficient_quota",
    "ContentFiltered": "content_filter",
    "Unauthenticated": "invalid_api_key",
}

_ATTEMPT_CODES = {
    "rate_limited": "rate_limit_exceeded",
    "quota_exhausted": "insufficient_quota",
    "context_too_long": "context_length_exceeded",
    "content_filtered": "content_filter",
}
"""An upstream failure's kind (``AttemptRecord.outcome``) as OpenAI's error code."""

DEFAULT_RETRY_AFTER_S = 1
_WAIT_STATUSES = frozenset({429, 503})
"""Statuses whose answers say when to retry (``retry-after``)."""
_RETRY_LATER = ((b"retry-after", str(DEFAULT_RETRY_AFTER_S).encode()),)


def http_status(outcome: Outcome) -> int:
    if outcome.code is grpc.StatusCode.UNAVAILABLE and outcome.kind in _UPSTREAM_KINDS:
        return 502
    return STATUS_OF.get(outcome.code, 500)


def _param(outcome: Outcome, error: BaseException | None) -> str | None:
    if isinstance(error, InvalidRequest):
        return error.field
    return None


class OpenAIFrontDoor:
    """Routes HTTP requests to the pipeline; ``handle`` is the server's handler."""

    def __init__(self, pipeline: Pipeline, ready: Callable[[], str | None] = lambda: None) -> None:
        self._p = pipeline
        self._ready = ready
        self._routes: dict[tuple[str, str], Callable[[Request, Response], Any]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/embeddings"): self._embed,
            ("GET", "/v1/models"): self._models,
            ("GET", "/healthz"): self._live,
            ("GET", "/readyz"): self._readiness,
        }
        self._paths = {path for _, path in self._routes}

    async def handle(self, request: Request, response: Response) -> None:
        # HEAD is GET without the body (RFC 9110 9.3.2; every server must take both): load
        # balancers probe /healthz with it. The server leaves the body out of the answer.
        method = "GET" if request.method == "HEAD" else request.method
        key = (method, request.path.rstrip("/") or "/")
        route = self._routes.get(key)
        if route is None or key[1] not in _PIPELINE_PATHS:
            # No pipeline runs, so none gives the answer its id: the caller's, or a new one.
            response.carry_request_id(request.header("x-request-id"))
        if route is None:
            path = request.path.rstrip("/")
            if path.startswith(_MODEL_PREFIX) and method == "GET":
                await self._model(request, response, path[len(_MODEL_PREFIX) :])
                return
            if path in self._paths or path.startswith(_MODEL_PREFIX):
                if path in self._paths:
                    allowed = ", ".join(m for m, p in self._routes if p == path)
                else:
                    path, allowed = f"{_MODEL_PREFIX}{{model}}", "GET"
                allowed = allowed.replace("GET", "GET, HEAD")
                await _error(response, 405, f"{request.method} is not allowed on {path[:100]}; use {allowed}",
                             extra=((b"allow", allowed.encode()),))  # fmt: skip
            else:
                await _error(response, 404, f"no such endpoint: {request.method} {request.path[:100]}")
            return
        await route(request, response)

    def may_send_body(self, request: Request) -> bool:
        """The HTTP server's screen (``Screen``) of a request waiting for ``100 Continue``:
        False when its credentials are refused as they stand (or no snapshot is served), so
        it is answered (401, with its ids and evidence record) without its body being read."""
        return request.path.rstrip("/") not in _PIPELINE_PATHS or self._admitted(request)

    def _admitted(self, request: Request) -> bool:
        """Whether the request's credentials pass, as the pipeline will first check them."""
        try:
            state = self._p.store.require()
            authenticate(
                state.config,
                bearer_token(request.headers),
                time.time(),
                request.peer_certificate,
                request.peer_refusal,
            )
        except SignalboxError:
            return False
        return True

    # ---- routes ----

    def _call(self, operation: Operation, request: Request, decode: Callable[[], Any]) -> Call[Any]:
        timeout: float | None = None
        if supplied := request.header("x-signalbox-timeout-ms"):
            timeout = _timeout_seconds(supplied)
            if timeout is None:
                # Refused like any bad header: in decode, so after authentication and with
                # the request's ids and evidence record. A value ignored instead would run
                # the request on the node's default deadline, not the one the caller meant.
                decode = _refusing(
                    "x-signalbox-timeout-ms",
                    f"must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}, not {shown(supplied, 32)}",
                )
        return Call(
            operation,
            decode,
            api_key=bearer_token(request.headers),
            correlation_id=request.header("x-request-id"),
            correlation_field="header x-request-id",
            request_sha256=hashlib.sha256(request.body).hexdigest(),
            timeout=timeout,
            peer_certificate=request.peer_certificate,
            peer_refusal=request.peer_refusal,
            header=request.header,
        )

    async def _chat(self, request: Request, response: Response) -> None:
        parsed: list[Any] = []
        # Only a caller whose credentials pass has its body parsed before the pipeline: an
        # anonymous 16 MB body that named "stream" was parsed (seconds of the event loop for
        # one of tiny arrays) before its 401. Refused, it is recorded as a whole answer.
        # Checked only for a body that needs the early parse: every other request would pay
        # for its credentials twice (the pipeline authenticates it anyway).
        stream, early = _wants_stream(request.body, lambda: self._admitted(request))

        def decode() -> Any:
            # A body parsed already to see whether it streams is not parsed again.
            body = edge.loads(request.body, bounds=edge.chat_counts) if early is _UNPARSED else early
            parsed.append(body)
            return edge.decode_chat(body, request.headers)

        call = self._call(Operation.STREAM if stream else Operation.CHAT, request, decode)
        if stream:
            await self._stream(call, response, parsed)
            return
        try:
            served = await self._p.answer(call)
        except Refused as refused:
            await _refusal(response, refused, parsed[0] if parsed else None)
            return
        body = answers.completion(
            _response_id(served.evidence_id), served.candidate.model.alias, served.result
        )
        await response.send(200, (_JSON, *_ids(served.correlation_id, served.evidence_id)), body)

    async def _stream(self, call: Call[Any], response: Response, parsed: list[Any]) -> None:
        events = self._p.stream(call)
        writer: answers.ChunkWriter | None = None
        first = True
        try:
            async for event in events:
                if isinstance(event, Opened):
                    usage = edge.include_usage(parsed[0]) if parsed else False
                    writer = answers.ChunkWriter(
                        _response_id(event.evidence_id), event.candidate.model.alias, usage
                    )
                    await response.start(200, (*_SSE, *_ids(event.correlation_id, event.evidence_id)))
                    await response.write(writer.opened())
                elif isinstance(event, Closed):
                    assert writer is not None
                    await response.write(writer.closed(event.finish_reason, event.usage))
                else:
                    assert writer is not None
                    # The first delta goes at once (with the head and role before it): the
                    # time to first token; later ones leave with whatever else is ready.
                    await response.write(writer.chunk(event), now=first)
                    first = False
        except Refused as refused:
            if not response.started:
                await _refusal(response, refused, parsed[0] if parsed else None)
                return
            status = http_status(refused.outcome)
            error = answers.error(status, _message(refused), code=_code(refused))
            await response.write(b"event: error\ndata: " + error + b"\n\n")
        finally:
            await events.aclose()
        await response.end()

    async def _embed(self, request: Request, response: Response) -> None:
        encoding: list[str] = ["float"]
        parsed: list[Any] = []

        def decode() -> Any:
            body = edge.loads(request.body, bounds=edge.embed_counts)
            parsed.append(body)
            if isinstance(body, dict) and body.get("encoding_format") == "base64":
                encoding[0] = "base64"
            return edge.decode_embed(body, request.headers)

        call = self._call(Operation.EMBED, request, decode)
        try:
            served = await self._p.embed(call)
        except Refused as refused:
            await _refusal(response, refused, parsed[0] if parsed else None)
            return
        body = answers.embeddings(served.candidate.model.alias, served.result, encoding[0])
        await response.send(200, (_JSON, *_ids(served.correlation_id, served.evidence_id)), body)

    async def _models(self, request: Request, response: Response) -> None:
        """The models the caller may name: its tenant's policy's allowed models (what an explicit
        ``model`` may be), within its key's ``model:`` scopes."""
        aliases = await self._allowed(request, response)
        if aliases is not None:
            await response.send(200, (_JSON,), answers.models(aliases))

    async def _model(self, request: Request, response: Response, quoted: str) -> None:
        """One of them (``client.models.retrieve``); 404 ``model_not_found`` for any other,
        as OpenAI answers for a model that does not exist or that the caller may not use."""
        model = _unquoted(quoted)
        aliases = await self._allowed(request, response)
        if aliases is None:
            return
        if model in aliases:
            await response.send(200, (_JSON,), answers.model(model))
            return
        shown = model[:100].encode("unicode_escape").decode("ascii")
        await _error(
            response,
            404,
            f"the model '{shown}' does not exist or this API key may not use it",
            code="model_not_found",
        )

    async def _allowed(self, request: Request, response: Response) -> list[str] | None:
        """The aliases the caller may name, sorted; None once refused (answered already)."""
        try:
            state = self._p.store.require()
            caller = authenticate(
                state.config,
                bearer_token(request.headers),
                time.time(),
                request.peer_certificate,
                request.peer_refusal,
            )
        except SignalboxError as exc:
            outcome = to_status(exc)
            status = http_status(outcome)
            wait = _RETRY_LATER if status in _WAIT_STATUSES else ()
            message = edge.http_wording(outcome.message)
            await _error(response, status, message, code=_CODES.get(outcome.kind), extra=wait)
            return None
        policies = state.config.policies
        policy = policies.get(caller.tenant.id) or policies.get("")
        allowed = policy.allowed_models if policy is not None and policy.allowed_models is not None else ()
        return sorted(a for a in allowed if a in state.config.models and caller.scope.allows_model(a))

    async def _live(self, request: Request, response: Response) -> None:
        """Liveness, for a load balancer or an HTTP probe: the process answers."""
        await response.send(200, (_JSON,), b'{"status":"ok"}')

    async def _readiness(self, request: Request, response: Response) -> None:
        """Readiness (``dataplane.readiness``, as gRPC health's SERVING): a valid snapshot is
        served, evidence can be written, no stop has begun; 503 with the reason otherwise, so
        a load balancer sends callers elsewhere."""
        reason = self._ready()
        if reason is None:
            await response.send(200, (_JSON,), b'{"status":"ready"}')
        else:
            await response.send(503, (_JSON,), orjson.dumps({"status": "not ready", "reason": reason}))


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    if value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


_MODEL_PREFIX = "/v1/models/"
_PIPELINE_PATHS = frozenset({"/v1/chat/completions", "/v1/embeddings"})
"""What runs the pipeline, which authenticates the caller before it reads the body."""


def _unquoted(quoted: str) -> str:
    """A percent-encoded model name (``a%2Fb``); one that does not decode names no model."""
    try:
        return urllib.parse.unquote(quoted, errors="strict")
    except UnicodeDecodeError:
        return ""


MAX_TIMEOUT_MS = 2**31 - 1
"""The longest ``x-signalbox-timeout-ms`` (24.8 days): beyond any real deadline, and far
below what a float holds (a header of 400 digits overflowed the division to seconds: a 500)."""


def _timeout_seconds(value: str) -> float | None:
    """``x-signalbox-timeout-ms`` as seconds; None when it is not 1..MAX_TIMEOUT_MS in ASCII
    digits (``int`` alone also takes ``+5``, ``1_000`` and surrounding spaces)."""
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(MAX_TIMEOUT_MS)):
        return None
    milliseconds = int(value)
    return milliseconds / 1000 if 1 <= milliseconds <= MAX_TIMEOUT_MS else None


def _refusing(field: str, problem: str) -> Callable[[], Any]:
    def decode() -> Any:
        # A new error, not one kept in this closure: raised, its traceback would hold this
        # frame, which holds the closure's cell (a cycle keeping the request's objects).
        raise InvalidRequest(field, problem)

    return decode


_UNPARSED = object()
"""What ``_wants_stream`` returns for a body it did not parse."""


def _wants_stream(body: bytes, admitted: Callable[[], bool]) -> tuple[bool, Any]:
    """Whether the body asks to stream, read cheaply before the pipeline decodes it, and the
    body parsed if that took parsing it (else ``_UNPARSED``): a body that does not parse is
    refused by the pipeline's decode, after authentication. A key may also spell "stream"
    with escapes (``"\\u0073tream"``): such a body asked to stream was answered whole, its
    ``stream_options`` accepted and its record an ``infer``; a body with any ``\\u`` is parsed
    here too (the parse is the decode's, not a second one). Only a body whose caller is
    ``admitted`` is parsed here: an anonymous one is left to the pipeline's 401."""
    if (b'"stream"' not in body and b"\\u" not in body) or not admitted():
        return False, _UNPARSED
    try:
        parsed = edge.loads(body, bounds=edge.chat_counts)
    except InvalidRequest:
        return False, _UNPARSED
    return isinstance(parsed, dict) and parsed.get("stream") is True, parsed


def _response_id(evidence_id: str) -> str:
    return f"chatcmpl-{evidence_id}" if evidence_id else "chatcmpl-unrecorded"


def _ids(correlation_id: str, evidence_id: str) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"x-request-id", correlation_id.encode()), (b"x-evidence-id", evidence_id.encode()))


def retry_after(refused: Refused) -> int:
    """Whole seconds a rate-limited caller should wait: the soonest any upstream said it
    frees up (at most ``DEFAULT_MAX_RETRY_AFTER_S``, as the dispatcher honours it), or what
    the refusal's cause carries, else ``DEFAULT_RETRY_AFTER_S``."""
    cause = refused.__cause__
    said = [a.retry_after_s for a in getattr(cause, "attempts", ()) if a.retry_after_s]
    seconds = min(said) if said else getattr(cause, "retry_after", None) or DEFAULT_RETRY_AFTER_S
    return max(1, math.ceil(min(seconds, DEFAULT_MAX_RETRY_AFTER_S)))


def _code(refused: Refused) -> str | None:
    """OpenAI's error code for a refusal: its own kind's, or, when every upstream attempt
    failed the same way, that failure's (the refusal is then ``AllCandidatesFailed``, whose
    status is already that failure's): a context overflow on the only candidate came back
    without context_length_exceeded, the code clients check before trimming a conversation."""
    if (code := _CODES.get(refused.outcome.kind)) is not None:
        return code
    kinds = {a.outcome for a in getattr(refused.__cause__, "attempts", ())}
    return _ATTEMPT_CODES.get(kinds.pop()) if len(kinds) == 1 else None


def _upstream_said_wait(refused: Refused) -> bool:
    return any(a.retry_after_s for a in getattr(refused.__cause__, "attempts", ()))


def _message(refused: Refused) -> str:
    return f"{edge.http_wording(refused.outcome.message)} (request id {refused.correlation_id})"


async def _refusal(response: Response, refused: Refused, body: Any = None) -> None:
    """``body``: the request's parsed JSON, when it parsed (names a refused field as sent)."""
    outcome = refused.outcome
    status = http_status(outcome)
    cause = caller_error(refused.__cause__) if refused.__cause__ is not None else None
    extra = _ids(refused.correlation_id, refused.evidence_id)
    if status in _WAIT_STATUSES or outcome.retry_after is not None or _upstream_said_wait(refused):
        # 429s and 503s (a node with no snapshot yet, a tenant failing closed while no quota
        # can be leased, ...): when to try again, as OpenAI's SDKs read it. A 503 without
        # one left a caller's own retry loop to guess. So does a 502 whose upstreams said
        # when they free up (503 with Retry-After): dropped, the SDK retried at once.
        extra += ((b"retry-after", str(retry_after(refused)).encode()),)
    param = _param(outcome, cause)
    message = _message(refused)
    if param is not None and (wire := edge.wire_field(param, body)) != param:
        # The shared validation names the pipeline's fields (params.max_output_tokens); an
        # OpenAI caller is told the one it sent (max_tokens), in param and in the message.
        if message.startswith(f"{param}: "):
            message = wire + message[len(param) :]
        param = wire
    await _error(
        response,
        status,
        message,
        param=param,
        code=_code(refused),
        extra=extra,
    )


async def _error(
    response: Response,
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    await response.send(status, (_JSON, *extra), answers.error(status, message, param=param, code=code))


def server_error_body(status: int, message: str) -> bytes:
    """The body of the errors the HTTP server answers itself (limits, timeouts, bad HTTP)."""
    return answers.error(status, message)
