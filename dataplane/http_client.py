"""The node's one shared upstream HTTP client: httpx's API over aiohttp's connection pool.

Adapters speak ``httpx`` (``AsyncClient.post``, ``send(stream=True)``, httpx
exceptions), as the provider protocol says. Underneath, ``AiohttpTransport``
carries the bytes with aiohttp, whose HTTP/1.1 parser and pool are written in C:
measured on one core, an upstream call costs about half the CPU of httpx's
default httpcore/anyio transport, and the upstream call is most of a request's
CPU. Every aiohttp failure becomes the matching httpx exception in
``_ERRORS``, the one table, so adapters classify failures exactly as they would
with httpx's own transport.

``build_http_client(transport="httpx")`` gives the stock transport instead.
"""

from __future__ import annotations

import io
import ssl
from collections.abc import AsyncIterator
from typing import Literal

import aiohttp
import certifi
import httpx
from yarl import URL

TransportName = Literal["aiohttp", "httpx"]

# Most specific first: each aiohttp timeout is also a connection error.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientOSError, httpx.ReadError),
    (aiohttp.ClientConnectionError, httpx.NetworkError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.TransportError),
    (TimeoutError, httpx.ReadTimeout),
)


def _translate(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    for source, target in _ERRORS:
        if isinstance(exc, source):
            return target(f"{type(exc).__name__}: {exc}", request=request)
    return httpx.TransportError(f"{type(exc).__name__}: {exc}", request=request)


_LARGE_BODY = 1024 * 1024
"""Request bodies this large go to aiohttp as a stream (see ``handle_async_request``)."""


class _ResponseStream(httpx.AsyncByteStream):
    """An aiohttp response body as httpx reads it; closing it ends the upstream call."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, self._request) from exc

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # back to the pool for the next call
        else:
            # Closed before the end (the caller hung up): drop the connection so
            # the upstream stops generating.
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp ``ClientSession``; create it inside the event loop."""

    def __init__(self, *, max_connections: int, max_keepalive: int, keepalive_expiry: float) -> None:
        # The same CA bundle as httpx's default transport, so TLS trust does not
        # change with the transport.
        context = ssl.create_default_context(cafile=certifi.where())
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=0,
            keepalive_timeout=keepalive_expiry,
            ssl=context,
        )
        del max_keepalive  # aiohttp keeps every idle connection until keepalive_timeout
        # auto_decompress off: httpx decodes Content-Encoding itself, as with its own transport.
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
        )
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        spec = request.extensions.get("timeout") or {}
        key = (spec.get("connect"), spec.get("read"), spec.get("pool"))
        found = self._timeouts.get(key)
        if found is None:
            connect, read, pool = key
            found = aiohttp.ClientTimeout(
                total=None,
                # aiohttp's "connect" covers waiting for a pooled connection and connecting.
                connect=None if connect is None or pool is None else connect + pool,
                sock_connect=connect,
                sock_read=read,
            )
            if len(self._timeouts) < 64:  # adapters use a handful of distinct timeouts
                self._timeouts[key] = found
        return found

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        # aiohttp warns (ResourceWarning) about raw bytes of 1 MiB or more; a stream of them
        # is sent the same way without the warning (a caller's large request must not fail).
        data: bytes | io.BytesIO | None = io.BytesIO(body) if len(body) >= _LARGE_BODY else body or None
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw]
        try:
            response = await self._session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=headers,
                data=data,
                timeout=self._timeout(request),
                allow_redirects=False,
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_ResponseStream(response, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        await self._session.close()


class _NoCookies(httpx.Cookies):
    """A cookie store that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class NodeHTTPClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` without a cookie jar.

    One client serves every tenant's calls, so a cookie set by a provider on one
    call must never ride along on another's. Not keeping cookies also skips
    httpx's per-response cookie parsing (urllib request wrappers), which showed
    up in the node's per-request CPU profile.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        del cookies  # httpx's __init__ assigns one; nothing is kept


_NO_COOKIES = _NoCookies()


def build_http_client(
    *,
    max_connections: int = 512,
    max_keepalive: int = 128,
    keepalive_expiry: float = 30.0,
    transport: TransportName = "aiohttp",
) -> httpx.AsyncClient:
    """The pooled keep-alive client every adapter of a node shares."""
    # Adapters pass each attempt's own timeout; this is only the ceiling.
    timeout = httpx.Timeout(300.0, connect=10.0)
    if transport == "httpx":
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive,
            keepalive_expiry=keepalive_expiry,
        )
        return NodeHTTPClient(limits=limits, timeout=timeout, follow_redirects=False, trust_env=False)
    return NodeHTTPClient(
        transport=AiohttpTransport(
            max_connections=max_connections, max_keepalive=max_keepalive, keepalive_expiry=keepalive_expiry
        ),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
