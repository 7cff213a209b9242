"""What the HTTP server reads of a request's head before its body: the version, and the
headers that frame the body (``dataplane.http.server`` answers what this refuses)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dataplane.http.messages import text

OTHER_VERSION = "Invalid HTTP version"
"""What httptools says of a well-formed version it does not parse (HTTP/1.2, HTTP/3.0)."""
VERSIONS = "HTTP version not supported; this server speaks HTTP/1.1 (and HTTP/1.0)"

_HOST = re.compile(rb"(?:\[[0-9A-Za-z:._~!$&'()*+,;=-]+\]|[0-9A-Za-z._~%!$&'()*+,;=-]*)(?::[0-9]*)?")
"""RFC 9110 7.2's ``Host = uri-host [ ":" port ]`` (RFC 3986's IP-literal, IPv4address or
reg-name; empty when the target has no authority)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str
    extra: bytes = b""
    """Header lines of the answer, each ending in CRLF."""


def check_head(
    version: str, headers: Sequence[tuple[bytes, bytes]], max_body_bytes: int
) -> tuple[Refusal | None, bytes]:
    """Why a request with this version and these (lower-case name, value) headers is refused
    before its body is read (None: it is not), and its ``Expect`` header's value."""
    if version not in ("1.0", "1.1"):
        # HTTP/2.0 (and 0.9), which httptools parses, were answered as HTTP/1.1: a client
        # took an answer in a protocol it did not speak for one in its own.
        return Refusal(505, VERSIONS), b""
    # One pass for the headers the server itself reads (the first of each counts).
    length: bytes | None = None
    codings: list[bytes] = []
    content_codings: list[bytes] = []
    expect = b""
    hosts = 0
    host = b""
    for name, value in headers:
        if name == b"content-length":
            if length is None:
                length = value
        elif name == b"transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(b","))
        elif name == b"content-encoding":
            content_codings.extend(c.strip().lower() for c in value.split(b","))
        elif name == b"expect" and not expect:
            expect = value
        elif name == b"host":
            hosts += 1
            host = value
    # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without a host header,
    # with more than one, or with one whose value is not a host. A proxy in front that checks
    # or routes by one of them while another hop reads the other is the classic confusion.
    if hosts > 1:
        return Refusal(400, "a request may carry one host header, not several"), expect
    if hosts == 0 and version == "1.1":
        return Refusal(400, "an HTTP/1.1 request must carry a host header"), expect
    if hosts and _HOST.fullmatch(host) is None:
        return Refusal(400, "the host header is not a host name or address (with an optional port)"), expect
    if length is not None and codings:
        return Refusal(400, "a request may not carry both content-length and transfer-encoding"), expect
    if codings and codings != [b"chunked"]:
        # httptools frames a body whose last coding is chunked and leaves the others
        # (gzip, deflate, ...) to us: unrefused, the still-coded bytes reached the
        # handler as the body. None is implemented (RFC 9112 6.1: 501).
        shown = text(b", ".join(codings))[:64]
        return Refusal(501, f"transfer-encoding {shown!r} is not supported; only chunked"), expect
    if any(c not in (b"", b"identity") for c in content_codings):
        # No handler decodes a content coding: a gzip body reached the door as it came
        # and was refused as "not valid JSON (not valid UTF-8)", naming neither the
        # header nor the remedy. Refused before a byte of the body is read (RFC 9110
        # 15.5.16: 415, with Accept-Encoding saying what is taken).
        shown = text(b", ".join(content_codings))[:64]
        return Refusal(
            415,
            f"content-encoding {shown!r} is not supported; send the request body uncompressed",
            b"accept-encoding: identity\r\n",
        ), expect
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            return Refusal(400, "content-length is not a number"), expect
        if declared > max_body_bytes:
            return Refusal(413, f"request body of {declared} bytes exceeds {max_body_bytes}"), expect
    return None, expect
