"""The node's upstream HTTP/1.1 client, written for one job: JSON POSTs to model providers.

The upstream call is most of a request's CPU on a node. A general-purpose
client (httpx over aiohttp, before this) builds request and response objects,
header multidicts, cookie jars and URL objects per call; this one keeps only
what that call needs:

- ``connection``: one ``asyncio.Protocol`` per socket, parsing answers with
  ``httptools`` (the parser the node's HTTP door uses), handing body chunks to
  the reader with flow control, closing the socket at once when a reader
  leaves early (the upstream sees the disconnect). An answer of another HTTP
  version than 1.x, or with a singleton field (``Content-Type``) twice, is a
  protocol error, as are the ambiguous lengths the parser refuses.
- ``codings``: the transfer codings an answer may carry before chunked (gzip, deflate),
  decoded a bounded piece at a time; any other is a protocol error naming it.
- ``client``: ``UpstreamClient``, keep-alive pools per origin (scheme, host,
  port) with a bound on open and on idle connections and an idle timeout; TLS
  with certifi's CA bundle and SNI; request heads built from parts encoded
  once (the URL's request line per target, an adapter's fixed headers per
  adapter). A request is sent once: a pooled connection that closes before
  answering fails the call (a closed idle one is never handed out), and
  another attempt is the dispatch policy's.

Failures are raised as the classes of ``errors`` (httpx's names and hierarchy:
``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``PoolTimeout``, ``ReadError``,
``RemoteProtocolError``, ``DecodingError``, ``LocalProtocolError``,
``UnsupportedProtocol``), which ``dataplane.providers.classify`` maps. Their
messages name the host and port at most: never a path, query, header or body, so
no credential can ride along.
"""

from .client import (
    TRACE_HEADERS,
    UpstreamClient,
    UpstreamResponse,
    content_coded,
    default_ssl_context,
    encode_headers,
    text_encoding,
)

__all__ = [
    "TRACE_HEADERS",
    "UpstreamClient",
    "UpstreamResponse",
    "content_coded",
    "default_ssl_context",
    "encode_headers",
    "text_encoding",
]
