"""TLS for the Admin/config-sync API and the Infer API, and for their clients.

One rule on both sides, so nothing leaves a machine in plaintext by accident:

* a server listens with TLS when given a certificate and key (``--tls-cert``,
  ``--tls-key``; ``--tls-client-ca`` also requires and verifies client
  certificates). Without them it listens in plaintext only on a loopback address
  (``127.0.0.0/8``, ``::1``, ``localhost``) or when ``--insecure`` says so
  explicitly; anything else refuses to start (``InsecureListen``);
* a client uses TLS when given a CA (``--ca``) or a client certificate, and with the
  system's roots for a non-loopback target; plaintext only to a loopback target or
  with ``--insecure``.
"""

from __future__ import annotations

import argparse
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from dataplane.files import read_regular
from signalbox import settings


class TlsConfigError(ValueError):
    """A TLS setting is missing, contradictory or unreadable; the message names the flag."""


class InsecureListen(TlsConfigError):
    """A plaintext listen address that is not loopback, without ``--insecure``."""


def host_of(address: str) -> str:
    """The host of ``host:port`` (``[::1]:7700`` -> ``::1``); the whole string when there is no port."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def is_loopback(address: str) -> bool:
    """True when ``host:port`` can only be reached from this machine."""
    host = host_of(address).strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname, "", "0.0.0.0", "[::]": reachable from elsewhere


MAX_PEM_BYTES = 1024 * 1024
"""A larger certificate, key or CA file is refused unread (a long chain is a few tens of KB)."""


def _read(path: Path, flag: str) -> bytes:
    try:
        # Bounded and without blocking: a FIFO named by a flag hung the start, and /dev/zero
        # was read until memory ran out.
        data = read_regular(Path(path), MAX_PEM_BYTES)
    except OSError as exc:
        raise TlsConfigError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise TlsConfigError(f"{flag}: {path} is not a PEM file")
    return data


def _check_pair(cert: Path, key: Path) -> None:
    """Refuse a certificate chain and key that are not one pair: gRPC only fails to bind the
    port then, so the node said "cannot listen on 127.0.0.1:7701" for a wrong file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise TlsConfigError(
            f"--tls-cert {cert} and --tls-key {key}: not a PEM certificate chain and its private key ({reason})"
        ) from exc


@dataclass(frozen=True, slots=True)
class ServerTls:
    """How a server listens: certificate and key, optional client CA, or explicit plaintext."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    """Require client certificates signed by this CA (mutual TLS)."""
    insecure: bool = False
    """Allow plaintext on a non-loopback address."""

    @property
    def enabled(self) -> bool:
        return self.cert is not None

    def credentials(self, listen: str) -> grpc.ServerCredentials | None:
        """Server credentials, or None for plaintext when that is allowed; else ``TlsConfigError``."""
        if (self.cert is None) != (self.key is None):
            raise TlsConfigError("--tls-cert and --tls-key: give both or neither")
        if self.cert is None or self.key is None:
            if self.client_ca is not None:
                raise TlsConfigError("--tls-client-ca: needs --tls-cert and --tls-key")
            if not self.insecure and not is_loopback(listen):
                raise InsecureListen(
                    f"--listen {listen}: refusing to serve plaintext on a non-loopback address; "
                    "give --tls-cert and --tls-key, or --insecure to allow plaintext explicitly"
                )
            return None
        pair = (_read(self.key, "--tls-key"), _read(self.cert, "--tls-cert"))
        _check_pair(self.cert, self.key)
        if self.client_ca is None:
            return grpc.ssl_server_credentials([pair])
        return grpc.ssl_server_credentials(
            [pair], root_certificates=_read(self.client_ca, "--tls-client-ca"), require_client_auth=True
        )


def ssl_server_context(listen: str, tls: ServerTls) -> ssl.SSLContext | None:
    """The same choice as ``ServerTls.credentials`` for a server that is not gRPC (the node's
    HTTP front door): None for plaintext where that is allowed, else a TLS 1.2+ context that
    requires client certificates from ``client_ca`` when one is given."""
    if tls.credentials(listen) is None:
        return None
    assert tls.cert is not None
    assert tls.key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca is not None:
            context.load_verify_locations(cafile=tls.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"TLS files for {listen}: {exc}") from exc
    return context


def add_port(server: grpc.aio.Server, listen: str, tls: ServerTls, bind: str | None = None) -> int:
    """Bind ``server`` to ``listen`` with or without TLS per ``tls``; return the port (0: failed).
    ``bind``: the address to bind instead, with the TLS ``listen`` calls for (a loopback port
    behind a front that listens on ``listen``)."""
    creds = tls.credentials(listen)
    address = listen if bind is None else bind
    try:
        if creds is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, creds)
    except RuntimeError:
        # grpcio raises, rather than return 0, when the address cannot be bound (in use,
        # not local): the callers say which flag's address it is.
        return 0


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How a client connects: trusted CA, optional client certificate, or explicit plaintext."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False

    def credentials(self, target: str) -> grpc.ChannelCredentials | None:
        """Channel credentials, or None for plaintext (loopback target or ``insecure``)."""
        if (self.cert is None) != (self.key is None):
            raise TlsConfigError("--client-cert and --client-key: give both or neither")
        if self.ca is None and self.cert is None and (self.insecure or is_loopback(target)):
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=None if self.ca is None else _read(self.ca, "--ca"),
            private_key=None if self.key is None else _read(self.key, "--client-key"),
            certificate_chain=None if self.cert is None else _read(self.cert, "--client-cert"),
        )


def aio_channel(
    target: str, tls: ClientTls, options: Sequence[tuple[str, int | str]] = ()
) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` per ``tls`` (``options``: gRPC channel arguments)."""
    creds = tls.credentials(target)
    if creds is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, creds, options=list(options))


def sync_channel(target: str, tls: ClientTls) -> grpc.Channel:
    """A blocking channel to ``target`` per ``tls``."""
    creds = tls.credentials(target)
    if creds is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, creds)


def _path(raw: str | None) -> Path | None:
    return Path(raw) if raw else None


# ---- settings shared by the commands ----


def add_server_flags(parser: argparse.ArgumentParser, *, env_prefix: str, command: str) -> None:
    """``--tls-cert``, ``--tls-key``, ``--tls-client-ca`` and ``--insecure`` for a server."""
    add = settings.add
    add(
        parser,
        "--tls-cert",
        env=f"{env_prefix}_TLS_CERT",
        help="PEM certificate chain to serve TLS with (with --tls-key)",
        command=command,
    )
    add(
        parser,
        "--tls-key",
        env=f"{env_prefix}_TLS_KEY",
        help="PEM private key of --tls-cert",
        command=command,
    )
    add(
        parser,
        "--tls-client-ca",
        env=f"{env_prefix}_TLS_CLIENT_CA",
        help="PEM CA: require client certificates it signed (mutual TLS)",
        command=command,
    )
    add(
        parser,
        "--insecure",
        env=f"{env_prefix}_INSECURE",
        default=False,
        action="store_true",
        help="allow plaintext on a non-loopback address (default: refuse to start without TLS)",
        command=command,
    )


def server_tls(ns: argparse.Namespace) -> ServerTls:
    return ServerTls(
        cert=_path(ns.tls_cert),
        key=_path(ns.tls_key),
        client_ca=_path(ns.tls_client_ca),
        insecure=bool(ns.insecure),
    )


def add_client_flags(parser: argparse.ArgumentParser, *, env_prefix: str, command: str) -> None:
    """``--ca``, ``--client-cert``, ``--client-key`` and ``--insecure`` for a client."""
    add = settings.add
    add(
        parser,
        "--ca",
        env=f"{env_prefix}_CA",
        help="PEM CA the server's certificate must chain to (unset: plaintext to loopback, "
        "else the system's roots)",
        command=command,
    )
    add(
        parser,
        "--client-cert",
        env=f"{env_prefix}_CLIENT_CERT",
        help="PEM client certificate for servers that require one (with --client-key)",
        command=command,
    )
    add(
        parser,
        "--client-key",
        env=f"{env_prefix}_CLIENT_KEY",
        help="PEM private key of --client-cert",
        command=command,
    )
    add(
        parser,
        "--insecure",
        env=f"{env_prefix}_INSECURE",
        default=False,
        action="store_true",
        help="plaintext to a non-loopback target (default: TLS)",
        command=command,
    )


def client_tls(ns: argparse.Namespace) -> ClientTls:
    return ClientTls(
        ca=_path(ns.ca), cert=_path(ns.client_cert), key=_path(ns.client_key), insecure=bool(ns.insecure)
    )
