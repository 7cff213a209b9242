"""The one small protocol every provider adapter implements (the registry is ``registry``).

An adapter is built once per provider when a snapshot is applied (credentials
are resolved then, off the request path) and shares the node's pooled
``dataplane.upstream.UpstreamClient``. It never reads the environment or builds clients while
serving a request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar, Protocol

from dataplane.chat import ChatRequest, ChatResponse, EmbedRequest, EmbedResponse, StreamChunk
from dataplane.config.model import ProviderConfig
from dataplane.upstream import UpstreamClient


class ProviderAdapter(Protocol):
    """Speaks one provider's wire format, both ways, and classifies its errors.

    Every method raises only ``dataplane.errors.ProviderError`` subclasses.
    ``timeout`` is the seconds left for this attempt: ``complete`` and ``embed`` end by then
    (``UpstreamTimeout``) whatever the upstream does, as the upstream client bounds every
    wait by the call's deadline; the pipeline's dispatch relies on it and sets no timer.
    So does a ``stream``, however its upstream paces the bytes: the pipeline reads a stream
    past its first chunk with no timer of its own.
    """

    type_name: ClassVar[str]

    async def complete(self, model: str, request: ChatRequest, *, timeout: float) -> ChatResponse: ...

    def stream(self, model: str, request: ChatRequest, *, timeout: float) -> AsyncIterator[StreamChunk]:
        """Yield normalized chunks as they arrive. Closing the iterator cancels the upstream call."""
        ...

    async def embed(self, model: str, request: EmbedRequest, *, timeout: float) -> EmbedResponse: ...

    async def aclose(self) -> None: ...


class AdapterFactory(Protocol):
    def __call__(
        self, config: ProviderConfig, client: UpstreamClient, credential: str | None
    ) -> ProviderAdapter: ...
