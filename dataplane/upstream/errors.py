"""How an upstream call fails, below any provider's meaning: the classes the upstream client
raises and ``dataplane.providers.classify`` maps.

The names and the hierarchy are httpx's (the client the node used before its own), so an
operator who knows httpx reads them as they always have. They are defined here rather than
imported from httpx: the node no longer sends a byte through httpx, and importing it (with
the command-line tool it loads) cost ~0.1 s of CPU on every start of every node process.

A message names the host and port at most: never a path, query, header or body.
"""

from __future__ import annotations


class HTTPError(Exception):
    """Any failure of an upstream call before an HTTP status could be read."""


class TransportError(HTTPError):
    """The exchange failed: connecting, sending, reading or the pool."""


class TimeoutException(TransportError):
    """A timer ran out."""


class ConnectTimeout(TimeoutException):
    """No connection within the timeout."""


class ReadTimeout(TimeoutException):
    """The upstream sent nothing within the timeout."""


class PoolTimeout(TimeoutException):
    """No pooled connection came free within the timeout."""


class NetworkError(TransportError):
    """The socket failed."""


class ConnectError(NetworkError):
    """The upstream could not be connected to."""


class ReadError(NetworkError):
    """The connection failed or closed while an answer was awaited."""


class ProtocolError(TransportError):
    """The HTTP exchange broke its protocol."""


class LocalProtocolError(ProtocolError):
    """What the node would send is not valid HTTP (a header name or value)."""


class RemoteProtocolError(ProtocolError):
    """The upstream's answer is not valid HTTP/1.1, or it closed mid-answer."""


class UnsupportedProtocol(TransportError):
    """The upstream URL cannot be called (scheme, host)."""


class DecodingError(HTTPError):
    """The answer's body could not be decoded (its content encoding or charset)."""
