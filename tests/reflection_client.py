"""A client that knows nothing of Signalbox's .proto files: it learns a service through
server reflection (as grpcurl does) and calls it with messages built from what it learned.
Blocking: a test on an event loop runs it in a thread."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def list_services(address: str, metadata: Sequence[tuple[str, str]] = ()) -> list[str]:
    """The services the server at ``address`` lists."""
    with _channel(address, metadata) as channel:
        return sorted(ProtoReflectionDescriptorDatabase(channel).get_services())


def call(
    address: str,
    service: str,
    method: str,
    request: Mapping[str, Any],
    metadata: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Call a unary ``service/method`` with ``request`` (proto JSON), every type learned by
    reflection into a descriptor pool of this client's own; the answer as proto JSON."""
    with _channel(address, metadata) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        found = pool.FindServiceByName(service).methods_by_name[method]
        request_class = message_factory.GetMessageClass(found.input_type)
        response_class = message_factory.GetMessageClass(found.output_type)
        unary = channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        answer = unary(json_format.ParseDict(dict(request), request_class()), timeout=10)
        return json_format.MessageToDict(answer)


@contextmanager
def _channel(address: str, metadata: Sequence[tuple[str, str]]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address) as channel:
        yield grpc.intercept_channel(channel, _Metadata(tuple(metadata))) if metadata else channel


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Sends ``metadata`` (a token) on every call, reflection's stream included."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)
