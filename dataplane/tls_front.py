"""A TLS listener in front of a door, so a bad client certificate gets an answer, not a reset.

Why it exists: with ``--tls-client-ca`` the node requires client certificates. gRPC's and
Python's own TLS can only verify a certificate *during* the handshake, so a certificate
the client CA did not sign (a self-signed one, another CA's, an expired one) fails the
handshake: the caller sees UNAVAILABLE ("handshake failed"), as if the node were down, and
the node writes no evidence of the refused call. Neither lets a server ask for a
certificate, finish the handshake whatever it is, and decide afterwards.

OpenSSL does (a verify callback that records the verdict and lets the handshake go on),
and pyOpenSSL exposes it. So when the node has a client CA, each door listens in
plaintext on an ephemeral loopback port, and this front takes the public address:

- it runs the TLS handshake with OpenSSL in memory (``SSL.Connection`` over memory BIOs
  on an asyncio stream): it asks for a client certificate, verifies it against the client
  CA as the handshake would, records the verdict and never fails the handshake for it;
- it opens one loopback connection to the door per client connection and copies
  plaintext both ways in the transports' callbacks (two asyncio protocols, no task per
  chunk), with back-pressure: a side whose peer's write buffer is full stops reading;
- it files the verdict under the loopback connection's local port (``peer``), which is the
  peer address the door sees; the door looks it up for every request.

The door then refuses a request whose connection brought no trusted certificate with
UNAUTHENTICATED (401 on HTTP) and an evidence record, like every other bad credential. A
connection that did not come through this front (another local process dialling the
loopback port) has no verdict on file and is refused alike.

Costs: the front copies every byte once more through Python, so a node with a client CA
spends more CPU per request than one without (``bench/README.md`` gives the figures); a
node without a client CA keeps gRPC's and the HTTP door's own TLS, untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from OpenSSL import SSL, crypto

from dataplane.auth import INVALID
from dataplane.open_files import DEFAULT_MAX_CONNECTIONS, per_peer_cap
from dataplane.peer_places import PeerPlaces
from signalbox.relay import Backend, ClientSide, Listener
from signalbox.tls import ServerTls, TlsConfigError

log = logging.getLogger("signalbox.dataplane.tls")

CERTIFICATE_REQUIRED: Final = "authorization: this node requires a client certificate signed by its client CA"
BACKEND_HOST: Final = "127.0.0.1"
"""Where the doors behind a front listen."""
_READ: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Peer:
    """What TLS established about a client connection."""

    certificate: bytes | None
    """The client certificate (PEM), when the client CA verified it."""
    refusal: str | None
    """Why the connection's requests are refused (no or no trusted certificate); None: trusted."""


NOT_THROUGH_FRONT: Final = Peer(None, INVALID)
"""A connection to a door's loopback port that the front did not open."""

TRUSTED: Final = "trusted"
UNTRUSTED: Final = "untrusted"
NO_CERTIFICATE: Final = "no_certificate"
HANDSHAKE_FAILED: Final = "handshake_failed"
HANDSHAKE_TIMEOUT: Final = "handshake_timeout"
OVER_LIMIT: Final = "over_limit"
OVER_PEER_LIMIT: Final = "over_peer_limit"
RESULTS: Final = (
    TRUSTED,
    UNTRUSTED,
    NO_CERTIFICATE,
    HANDSHAKE_FAILED,
    HANDSHAKE_TIMEOUT,
    OVER_LIMIT,
    OVER_PEER_LIMIT,
)
"""How a client connection to a front ended its handshake (``TlsFront.results``)."""


def server_context(tls: ServerTls, listen: str, alpn: tuple[bytes, ...]) -> SSL.Context:
    """OpenSSL's server context for ``tls``: TLS 1.2+, a client certificate asked for and
    verified against the client CA, the verdict left to the caller (``_verdict``)."""
    assert tls.cert is not None
    assert tls.key is not None
    assert tls.client_ca is not None
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    # No session is ever resumed: a resumption skips verification, so the verify callback
    # would not run and a resumed session of an untrusted certificate would pass as trusted.
    # No tickets (TLS 1.2; in 1.3 they become stateful, looked up in the cache) and no cache:
    # a client that offers a session gets a full handshake.
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    try:
        context.use_certificate_chain_file(str(tls.cert))
        context.use_privatekey_file(str(tls.key))
        context.check_privatekey()
        context.load_verify_locations(str(tls.client_ca))
        context.load_client_ca(str(tls.client_ca).encode())
    except (OSError, SSL.Error) as exc:
        raise TlsConfigError(f"TLS files for {listen}: {exc}") from exc
    # Every certificate is let through the handshake; ``_let_through`` notes a failed check.
    context.set_verify(SSL.VERIFY_PEER, _let_through)
    offered = set(alpn)

    def select(_conn: SSL.Connection, protocols: list[bytes]) -> bytes:
        for protocol in protocols:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]

    context.set_alpn_select_callback(select)
    return context


class _Checked:
    """A connection's app data: what OpenSSL's check of the client's chain said."""

    __slots__ = ("failed", "leaf_verified")

    def __init__(self) -> None:
        self.failed = False
        """A certificate of the chain failed a check."""
        self.leaf_verified = False
        """The check reached the client's own certificate (depth 0) and passed it."""


def _let_through(conn: SSL.Connection, _cert: crypto.X509, _errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's verify callback, called per certificate of the chain with its check's
    result (``ok``), the client's own last: a failure is noted, and the handshake goes on."""
    checked = conn.get_app_data()
    if not ok:
        checked.failed = True
    elif depth == 0:
        checked.leaf_verified = True
    return True


def _verdict(conn: SSL.Connection) -> Peer:
    certificate = conn.get_peer_certificate()
    if certificate is None:
        return Peer(None, CERTIFICATE_REQUIRED)
    checked = conn.get_app_data()
    # Trusted only on a positive verdict from this handshake's own check.
    if checked.failed or not checked.leaf_verified:
        return Peer(None, INVALID)
    return Peer(crypto.dump_certificate(crypto.FILETYPE_PEM, certificate), None)


_RESULT_OF: Final = {None: TRUSTED, INVALID: UNTRUSTED, CERTIFICATE_REQUIRED: NO_CERTIFICATE}


class TlsFront(Listener):
    """Listens with TLS on a public address and forwards each connection to a door on
    ``BACKEND_HOST:backend_port``, filing what TLS established under the forwarding
    connection's local port."""

    def __init__(
        self,
        tls: ServerTls,
        listen: str,
        *,
        alpn: tuple[bytes, ...],
        handshake_timeout: float = 10.0,
        max_clients: int = DEFAULT_MAX_CONNECTIONS,
        max_per_peer: int | None = None,
        door: str = "",
    ) -> None:
        super().__init__()
        self.door = door
        self.max_clients = max_clients
        """Client connections held at once (each with an OpenSSL object and, once through
        the handshake, a connection to the door); one more is cut before any TLS."""
        self.max_per_peer = per_peer_cap(max_clients) if max_per_peer is None else max_per_peer
        """Client connections one address holds at once (the door behind sees only the
        front's, from loopback, so the front counts); one more is cut before any TLS."""
        self.peer_places = PeerPlaces()
        """Which door this front is for (``grpc``, ``http``): a metrics label."""
        self.results = dict.fromkeys(RESULTS, 0)
        """Client connections by how their handshake ended (``RESULTS``), since start."""
        self.context = server_context(tls, listen, alpn)
        self.handshake_timeout = handshake_timeout
        self.peers: dict[int, Peer] = {}
        """Verdicts by the local port of the front's connection to the door."""
        self._backend_port = 0

    @property
    def backend_port(self) -> int:
        """The door's loopback port behind this front."""
        return self._backend_port

    def peer(self, host: str, port: int) -> Peer:
        """What TLS established for the door's client at ``host:port`` (its loopback peer)."""
        if host != BACKEND_HOST:
            return NOT_THROUGH_FRONT
        return self.peers.get(port, NOT_THROUGH_FRONT)

    async def start(self, host: str, port: int, backend_port: int, *, reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (every interface for "" or "::", as gRPC does); return the
        bound port."""
        self._backend_port = backend_port
        return await self.listen(
            None if host in ("", "::") else host, port, lambda: _Client(self), reuse_port=reuse_port
        )


class _State(Enum):
    HANDSHAKE = 1
    CONNECTING = 2
    RELAY = 3
    CLOSED = 4


class _Client(ClientSide):
    """A client's TLS connection: the handshake, then plaintext to and from the door."""

    def __init__(self, front: TlsFront) -> None:
        self._front = front
        self._conn = SSL.Connection(front.context, None)
        self._conn.set_app_data(_Checked())
        self._conn.set_accept_state()
        self._state = _State.HANDSHAKE
        self._transport: asyncio.Transport | None = None
        self._backend: asyncio.Transport | None = None
        self._port = 0
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._peer_host: str | None = None

    # ---- the client's side ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._front.clients.add(self)
        if len(self._front.clients) > self._front.max_clients:
            self._front.results[OVER_LIMIT] += 1
            self._state = _State.CLOSED
            self.abort()
            return
        self._peer_host, within = self._front.peer_places.take(transport, self._front.max_per_peer)
        if not within:
            self._front.results[OVER_PEER_LIMIT] += 1
            self._state = _State.CLOSED
            self.abort()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._front.handshake_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._front.results[HANDSHAKE_TIMEOUT] += 1
        self.abort()

    def data_received(self, data: bytes) -> None:
        try:
            self._conn.bio_write(data)
            if self._state is _State.HANDSHAKE:
                self._handshake()
            elif self._state is _State.RELAY:
                self._decrypt()
        except SSL.Error as exc:
            log.debug("TLS connection refused: %s", type(exc).__name__)
            if self._state is _State.HANDSHAKE:
                self._front.results[HANDSHAKE_FAILED] += 1
            self._flush()  # the alert, when there is one
            self._close()

    def _handshake(self) -> None:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        self._flush()
        assert self._timer is not None
        assert self._transport is not None
        self._timer.cancel()
        self._state = _State.CONNECTING
        # What else arrived stays in OpenSSL's buffer until the door's connection is open.
        self._transport.pause_reading()
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            backend, _ = await loop.create_connection(
                lambda: Backend(self), BACKEND_HOST, self._front.backend_port
            )
        except OSError as exc:
            log.warning("TLS front: cannot reach the door on port %d: %s", self._front.backend_port, exc)
            self.abort()
            return
        if self._state is _State.CLOSED:
            backend.close()
            return
        assert isinstance(backend, asyncio.Transport)
        assert self._transport is not None
        self._backend = backend
        # Filed before the door gets a byte from this client.
        self._port = backend.get_extra_info("sockname")[1]
        verdict = _verdict(self._conn)
        self._front.peers[self._port] = verdict
        self._front.results[_RESULT_OF[verdict.refusal]] += 1
        self._state = _State.RELAY
        try:
            self._decrypt()
        except SSL.Error:
            self._close()
            return
        self._transport.resume_reading()

    def _decrypt(self) -> None:
        assert self._backend is not None
        while True:
            try:
                plain = self._conn.recv(_READ)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # the client's close_notify
                self._close()
                return
            self._backend.write(plain)
        self._flush()  # post-handshake messages (key updates) want answers

    def _flush(self) -> None:
        """Send what OpenSSL wrote to its outgoing memory BIO."""
        assert self._transport is not None
        while True:
            try:
                data = self._conn.bio_read(_READ)
            except SSL.WantReadError:
                return
            if not data:
                return
            self._transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _State.CLOSED
        if self._timer is not None:
            self._timer.cancel()
        if self._port:
            self._front.peers.pop(self._port, None)
        if self._backend is not None:
            self._backend.close()
        elif self._connecting is not None:
            self._connecting.cancel()  # still dialling the door
        front = self._front
        if self._peer_host is not None:
            front.peer_places.give(self._peer_host)
            self._peer_host = None
        front.gone(self)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # ---- the door's side ----

    def from_backend(self, data: bytes) -> None:
        """The door's plaintext, to the client as TLS records."""
        if self._state is _State.CLOSED:
            return
        try:
            self._conn.sendall(data)
        except SSL.Error:
            self.abort()
            return
        self._flush()

    def backend_closed(self) -> None:
        """The door ended the connection: a close_notify to the client, then close."""
        if self._state is _State.CLOSED:
            return
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()
        self._flush()
        self._close()

    def backend_paused(self, paused: bool) -> None:
        """The door reads slower than the client sends."""
        if self._transport is None or self._state is _State.CLOSED:
            return
        if paused:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()


PeerLookup = Callable[[str, int], Peer]
