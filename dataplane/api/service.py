"""The gRPC front door: ``signalbox.api.infer.v1.InferService`` over the node's pipeline.

Each handler converts at the edge (``dataplane.edge.infer``), runs one flow of
the pipeline and converts the result back; a ``Refused`` request ends with its
status, the correlation id in message and trailers, and its evidence id.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from dataplane.api.status import CORRELATION_HEADER, abort
from dataplane.edge import infer as edge
from dataplane.pipeline import Call, Closed, Operation, Pipeline, Refused
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
Metadata = Iterable[tuple[str, str | bytes]]

_BEARER = "bearer "


class InferService(infer_pb2_grpc.InferServiceServicer):
    """Serves ``signalbox.api.infer.v1.InferService`` over a node's pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._p = pipeline

    async def Infer(self, request: infer_pb2.InferRequest, context: Context) -> infer_pb2.InferResponse:
        call = _call(Operation.CHAT, request, context, lambda: edge.decode_chat(request))
        try:
            served = await self._p.answer(call)
        except Refused as refused:
            await abort(context, refused.outcome, refused.correlation_id, refused.evidence_id)
        context.set_trailing_metadata(((CORRELATION_HEADER, served.correlation_id),))
        return edge.answer_to_proto(served)

    async def Embed(self, request: infer_pb2.EmbedRequest, context: Context) -> infer_pb2.EmbedResponse:
        call = _call(Operation.EMBED, request, context, lambda: edge.decode_embed(request))
        try:
            served = await self._p.embed(call)
        except Refused as refused:
            await abort(context, refused.outcome, refused.correlation_id, refused.evidence_id)
        context.set_trailing_metadata(((CORRELATION_HEADER, served.correlation_id),))
        return edge.embedding_to_proto(served)

    async def InferStream(
        self, request: infer_pb2.InferRequest, context: Context
    ) -> AsyncIterator[infer_pb2.InferStreamEvent]:
        call = _call(Operation.STREAM, request, context, lambda: edge.decode_chat(request))
        events = self._p.stream(call)
        try:
            async for event in events:
                if isinstance(event, Closed):
                    context.set_trailing_metadata(((CORRELATION_HEADER, event.correlation_id),))
                yield edge.stream_event_to_proto(event)
        except Refused as refused:
            await abort(context, refused.outcome, refused.correlation_id, refused.evidence_id)
        finally:
            await events.aclose()


def _call(
    operation: Operation,
    request: infer_pb2.InferRequest | infer_pb2.EmbedRequest,
    context: Context,
    decode: Any,
) -> Call[Any]:
    """The pipeline's view of a gRPC request: credential, correlation id, digest, deadline."""
    metadata = context.invocation_metadata()
    supplied, where = request.correlation_id, "correlation_id"
    if not supplied:
        supplied, where = _metadata_value(metadata, "x-correlation-id"), "metadata x-correlation-id"
    return Call(
        operation,
        decode,
        api_key=bearer_token(metadata),
        correlation_id=supplied,
        correlation_field=where,
        request_sha256=hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest(),
        timeout=context.time_remaining(),
    )


def _metadata_value(metadata: Metadata | None, name: str) -> str:
    for key, value in metadata or ():
        if key == name:
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return ""


def bearer_token(metadata: Metadata | None) -> str | None:
    """The bearer token from gRPC invocation metadata, if any."""
    for name, value in metadata or ():
        if name == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if text[:7].lower() == _BEARER:
                return text[7:].strip() or None
            return None
    return None
