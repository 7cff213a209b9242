"""Requests parsed by us, not by grpc: bytes that are no protobuf message are INVALID_ARGUMENT.

grpc parses each request message with the handler's deserializer before the servicer sees
it. When that fails (bad UTF-8 in a string field, a corrupt or truncated wire format),
grpc.aio answers UNKNOWN carrying the parser's text (and logs a traceback), and in a
stream the failure surfaces inside the servicer's own iteration as an error it does not
expect: Ship ended UNAVAILABLE "resend" (a node resends the same bytes for ever), Sync
INTERNAL. ``DecodingInterceptor`` registers the methods of the services it is given without
a deserializer and parses each message itself: one that does not parse is
``InvalidArgument`` naming the message (``request``, or ``message N of the stream``), its
type and the parser's reason. A unary call is refused before its servicer runs; in a
stream the error is raised where the servicer reads the message, which maps it as any
other bad input (``controlplane.api.status``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from controlplane.api.status import bounded
from controlplane.errors import InvalidArgument
from signalbox.api.config.v1 import identity_pb2, quota_pb2, sync_pb2
from signalbox.api.evidence.v1 import evidence_pb2

Context = grpc.aio.ServicerContext[Any, Any]
Parse = Callable[[bytes], Any]
if TYPE_CHECKING:  # grpc's classes take no type arguments at run time
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]

REASON_CHARS = 80
"""Of the parser's reason ("Wire format was corrupt", "String field had bad UTF-8"): its own
words, never the caller's bytes; clipped all the same."""
NODE_PORT_SERVICES = (
    sync_pb2.DESCRIPTOR.services_by_name["ConfigSyncService"],
    identity_pb2.DESCRIPTOR.services_by_name["NodeIdentityService"],
    evidence_pb2.DESCRIPTOR.services_by_name["EvidenceService"],
    quota_pb2.DESCRIPTOR.services_by_name["QuotaService"],
)
ENROLLMENT_SERVICES = (identity_pb2.DESCRIPTOR.services_by_name["NodeEnrollmentService"],)
"""On the admin port: what a node calls there (AdminService's own calls are the admin
interceptor's, ``controlplane.api.interceptor``)."""


def parsed(parse: Parse, data: bytes, what: str, type_name: str) -> Any:
    """``data`` parsed as ``type_name`` (``parse``), or ``InvalidArgument`` naming ``what``."""
    try:
        return parse(data)
    except DecodeError as exc:
        reason = str(exc).rpartition(": ")[2][:REASON_CHARS] or "does not parse"
        raise InvalidArgument(what, f"not a valid {type_name} message ({reason})") from None


async def parsed_stream(messages: AsyncIterator[bytes], parse: Parse, type_name: str) -> AsyncIterator[Any]:
    """The messages of a request stream, each parsed (``parsed``) as it is read."""
    index = 0
    async for data in messages:
        index += 1
        yield parsed(parse, data, f"message {index} of the stream", type_name)


class DecodingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Parses the requests of ``services``' methods itself (see the module)."""

    def __init__(self, services: Iterable[ServiceDescriptor]) -> None:
        self._types = {
            f"/{service.full_name}/{method.name}": method.input_type.full_name
            for service in services
            for method in service.methods
        }

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        type_name = self._types.get(details.method)
        if handler is None or type_name is None or handler.request_deserializer is None:
            return handler
        parse: Parse = handler.request_deserializer
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            # In a grpc.aio server the handlers are coroutine (generator) functions.
            unary = cast(Callable[[Any, Context], Awaitable[Any]], handler.unary_unary)

            async def unary_unary(data: bytes, context: Context) -> Any:
                try:
                    request = parsed(parse, data, "request", type_name)
                except InvalidArgument as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(exc.message))
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, None, serialize)
        if handler.stream_stream is not None:
            stream = cast(Callable[[AsyncIterator[Any], Context], AsyncGenerator[Any]], handler.stream_stream)

            async def stream_stream(messages: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
                responses = stream(parsed_stream(messages, parse, type_name), context)
                async with contextlib.aclosing(responses) as answers:
                    async for answer in answers:
                        yield answer

            return grpc.stream_stream_rpc_method_handler(stream_stream, None, serialize)
        raise TypeError(f"{details.method}: only unary and bidirectional methods are parsed here")
