"""The gRPC front door: ``signalbox.api.infer.v1.InferService`` over the node's pipeline.

Requests reach the handlers as the bytes the caller sent (``add_to_server`` registers
the methods without a request deserializer): the front door parses them itself, so a
request that is not a valid protobuf message (bad UTF-8 in a string or map field,
truncated bytes) is refused like every other bad input -- INVALID_ARGUMENT, one log
line, one evidence record -- instead of failing inside grpc. The request digest in
evidence is that of the bytes as received.

Each handler converts at the edge (``dataplane.edge.infer``), runs one flow of
the pipeline and converts the result back; a ``Refused`` request ends with its
status, the correlation id in message and trailers, and its evidence id.

A refusal ends with ``context.abort``, which raises an exception grpc.aio also keeps on the
call's state, reachable from the handler's frame (its ``context``) that the exception's
traceback holds: a reference cycle, freed only by the cyclic collector, which a serving
worker runs seldom (``dataplane.collector``). So a handler lets go of the request (its bytes,
message and pipeline call) before it aborts, and aborts outside its ``except`` block (the
``Refused``, and through it the pipeline's frames, would be the abort's context): the cycle
then holds grpc's own objects, not the request.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from dataplane.api.relay import coalesced
from dataplane.api.status import abort, evidence_trailers
from dataplane.connection_front import peer_of
from dataplane.edge import infer as edge
from dataplane.errors import InvalidRequest, clipped, shown
from dataplane.pipeline import Call, Closed, Operation, Pipeline, Refused
from dataplane.tls_front import NOT_THROUGH_FRONT, Peer, PeerLookup
from signalbox.api.infer.v1 import infer_pb2

log = logging.getLogger("signalbox.dataplane.api")

Context = grpc.aio.ServicerContext[Any, Any]
Metadata = Iterable[tuple[str, str | bytes]]
M = TypeVar("M", infer_pb2.InferRequest, infer_pb2.EmbedRequest)

SERVICE = infer_pb2.DESCRIPTOR.services_by_name["InferService"].full_name
_BEARER = "bearer "


class InferService:
    """Serves ``signalbox.api.infer.v1.InferService`` over a node's pipeline; each handler
    takes the request's serialized bytes (see ``add_to_server``)."""

    def __init__(self, pipeline: Pipeline, peers: PeerLookup | None = None) -> None:
        self._p = pipeline
        self._peers = peers
        """Where the node requires client certificates: what its TLS front established for
        each connection (``dataplane.tls_front``); None: gRPC's own TLS, if any."""

    async def Infer(self, request: bytes, context: Context) -> infer_pb2.InferResponse:
        message, decode = _parse(infer_pb2.InferRequest, request, context, edge.decode_chat)
        call = _call(Operation.CHAT, message, request, context, decode, self._peers)
        try:
            served = await self._p.answer(call)
        except Refused as refused:
            ending = refused.outcome, refused.correlation_id, refused.evidence_id
        else:
            context.set_trailing_metadata(evidence_trailers(served.correlation_id, served.evidence_id))
            return edge.answer_to_proto(served)
        del request, message, decode, call  # before the abort: module docstring
        await abort(context, *ending)

    async def Embed(self, request: bytes, context: Context) -> infer_pb2.EmbedResponse:
        message, decode = _parse(infer_pb2.EmbedRequest, request, context, edge.decode_embed)
        call = _call(Operation.EMBED, message, request, context, decode, self._peers)
        try:
            served = await self._p.embed(call)
        except Refused as refused:
            ending = refused.outcome, refused.correlation_id, refused.evidence_id
        else:
            context.set_trailing_metadata(evidence_trailers(served.correlation_id, served.evidence_id))
            return edge.embedding_to_proto(served)
        del request, message, decode, call  # before the abort: module docstring
        await abort(context, *ending)

    async def InferStream(
        self, request: bytes, context: Context
    ) -> AsyncIterator[infer_pb2.InferStreamEvent]:
        message, decode = _parse(infer_pb2.InferRequest, request, context, edge.decode_chat)
        call = _call(Operation.STREAM, message, request, context, decode, self._peers)
        events = self._p.stream(call)
        # Read ahead of the writes, the chunks that arrive meanwhile sent as one delta (relay).
        relayed = coalesced(events)
        event: object = None
        try:
            async for event in relayed:
                if isinstance(event, list):
                    yield edge.deltas_to_proto(event)
                    continue
                if isinstance(event, Closed):
                    context.set_trailing_metadata(evidence_trailers(event.correlation_id, event.evidence_id))
                yield edge.stream_event_to_proto(event)
        except Refused as refused:
            ending = refused.outcome, refused.correlation_id, refused.evidence_id
        else:
            return
        finally:
            await relayed.aclose()
            await events.aclose()
        del request, message, decode, call, events, relayed, event  # before the abort: module docstring
        await abort(context, *ending)


def add_to_server(servicer: InferService, server: grpc.aio.Server) -> None:
    """Register ``servicer`` as the InferService, its requests handed over as bytes.

    The same method handlers ``infer_pb2_grpc.add_InferServiceServicer_to_server`` builds,
    without the request deserializer (grpc then passes the bytes through)."""
    handlers = {
        "Infer": grpc.unary_unary_rpc_method_handler(
            servicer.Infer,
            request_deserializer=None,
            response_serializer=infer_pb2.InferResponse.SerializeToString,
        ),
        "InferStream": grpc.unary_stream_rpc_method_handler(
            servicer.InferStream,
            request_deserializer=None,
            response_serializer=infer_pb2.InferStreamEvent.SerializeToString,
        ),
        "Embed": grpc.unary_unary_rpc_method_handler(
            servicer.Embed,
            request_deserializer=None,
            response_serializer=infer_pb2.EmbedResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)  # type: ignore[attr-defined]  # not in grpc-stubs


def _parse(
    kind: type[M], data: bytes, context: Context, convert: Callable[[M], Any]
) -> tuple[M | None, Callable[[], Any]]:
    """The parsed message (None when ``data`` is not one) and the pipeline's decode step,
    which raises ``InvalidRequest`` for undecodable bytes."""
    try:
        message = kind.FromString(data)
    except DecodeError as exc:
        # upb says "Error parsing message with type '...': <what was wrong>".
        problem = str(exc).rpartition("': ")[2] or "cannot be parsed"
        name = kind.DESCRIPTOR.full_name
        log.warning(
            "refusing an undecodable %s from %s (%d bytes): %s",
            name,
            shown(peer_of(context), 80),
            len(data),
            shown(problem, 120),
        )

        def refuse() -> Any:
            raise InvalidRequest("request", f"not a valid {name}: {clipped(problem, 120)}")

        return None, refuse
    return message, lambda: convert(message)


def _call(
    operation: Operation,
    request: Message | None,
    data: bytes,
    context: Context,
    decode: Callable[[], Any],
    peers: PeerLookup | None,
) -> Call[Any]:
    """The pipeline's view of a gRPC request: credential, correlation id, digest, deadline."""
    metadata = context.invocation_metadata()
    if peers is None:
        # No client CA: gRPC asks for no client certificate, so there is none to read.
        certificate, refusal = None, None
    else:
        peer = front_peer(context, peers)
        certificate, refusal = peer.certificate, peer.refusal
    supplied = getattr(request, "correlation_id", "") if request is not None else ""
    where = "correlation_id"
    if not supplied:
        supplied, where = _metadata_value(metadata, "x-correlation-id"), "metadata x-correlation-id"
    return Call(
        operation,
        decode,
        api_key=bearer_token(metadata),
        correlation_id=supplied,
        correlation_field=where,
        request_sha256=hashlib.sha256(data).hexdigest(),
        timeout=context.time_remaining(),
        peer_certificate=certificate,
        peer_refusal=refusal,
        header=lambda name: _metadata_value(metadata, name),
    )


def _metadata_value(metadata: Metadata | None, name: str) -> str:
    for key, value in metadata or ():
        if key == name:
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return ""


def front_peer(context: Context, peers: PeerLookup) -> Peer:
    """What the TLS front established for this call's connection: gRPC's peer is the
    front's loopback connection, ``ipv4:127.0.0.1:<port>``."""
    _, _, address = str(context.peer()).partition(":")
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return NOT_THROUGH_FRONT
    return peers(host, int(port))


def bearer_token(metadata: Metadata | None) -> str | None:
    """The bearer token from gRPC invocation metadata, if any."""
    for name, value in metadata or ():
        if name == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if text[:7].lower() == _BEARER:
                return text[7:].strip() or None
            return None
    return None
