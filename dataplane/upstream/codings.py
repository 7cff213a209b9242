"""Transfer codings an upstream may apply to an answer's body, before (or without) chunked.

``Transfer-Encoding: gzip, chunked`` is HTTP/1.1 (RFC 9112 6.1, RFC 9110 8.4.1): the body
was gzipped, then chunked; ``httptools`` undoes the chunking, and this undoes the rest. Such
an answer used to reach the adapters as gzip bytes and fail as invalid JSON. A coding is the
hop's own, unlike a content coding (which the client still refuses: it asks for
``identity``), so it is decoded here, where the hop ends.

Decoding is bounded like every body: a reader takes at most ``MAX_PIECE`` decoded bytes per
piece, the rest of the input waits compressed, so the reader's own limit (the adapters' 32 MiB
answer, their 1 MiB stream line) stops a small body that inflates without end before it is held.
"""

from __future__ import annotations

import zlib

from .errors import DecodingError, RemoteProtocolError

MAX_PIECE = 64 * 1024
"""Decoded bytes handed to a reader at a time."""
_STEP = 16 * 1024
"""Encoded bytes given to zlib at a time."""

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""The codings decoded, as zlib's window bits: gzip's container, and deflate's (the zlib
format, RFC 9110 8.4.1.2)."""


def transfer_decoder(header: str) -> TransferDecoder | None:
    """The decoder of an answer's ``Transfer-Encoding`` (None: nothing but chunked, if that).

    Raises ``RemoteProtocolError`` naming what cannot be decoded: a coding other than gzip
    and deflate, more than one of them, or chunked anywhere but last (applied twice, or
    before another coding, it would leave chunk framing inside the body).
    """
    codings = [c.strip().lower() for c in header.split(",")]
    codings = [c for c in codings if c]
    if codings and codings[-1] == "chunked":
        codings.pop()
    if "chunked" in codings:
        raise RemoteProtocolError("upstream sent a Transfer-Encoding with chunked other than last")
    for coding in codings:
        if coding not in _WBITS:
            shown = coding[:32].encode("ascii", "backslashreplace").decode()
            raise RemoteProtocolError(
                f"upstream sent transfer coding {shown!r}, which the node does not decode"
            )
    if len(codings) > 1:
        raise RemoteProtocolError(
            f"upstream sent {len(codings)} transfer codings; the node decodes one at most"
        )
    return TransferDecoder(codings[0]) if codings else None


class TransferDecoder:
    """One answer's body, decoded piece by piece."""

    __slots__ = ("_coding", "_inflate", "_input", "_pos")

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._inflate = zlib.decompressobj(_WBITS[coding])
        self._input = memoryview(b"")
        """Input received and not decoded yet (from ``_pos``): more than one piece's worth."""
        self._pos = 0

    @property
    def pending(self) -> bool:
        """Whether input is waiting that ``decode(b"")`` turns into more output."""
        return self._pos < len(self._input)

    def decode(self, data: bytes) -> bytes:
        """At most ``MAX_PIECE`` decoded bytes of the input waiting and then ``data``.

        The input goes in ``_STEP`` bytes at a time: zlib copies what it leaves unconsumed on
        every call, and a piece of output may use only a few bytes of a large input."""
        if data:
            rest = self._input[self._pos :]
            self._input, self._pos = memoryview(bytes(rest) + data if rest else data), 0
        inflate, view = self._inflate, self._input
        pieces: list[bytes] = []
        size = 0
        while self._pos < len(view) and size < MAX_PIECE:
            if inflate.eof:
                raise DecodingError(f"upstream sent bytes after the end of its {self._coding} body")
            step = view[self._pos : self._pos + _STEP]
            try:
                out = inflate.decompress(step, MAX_PIECE - size)
            except zlib.error:
                raise DecodingError(f"upstream sent a body that is not valid {self._coding}") from None
            # Past the end of the coded body, zlib keeps the rest in ``unused_data``, not the tail.
            self._pos += len(step) - len(inflate.unconsumed_tail) - len(inflate.unused_data)
            if out:
                pieces.append(out)
                size += len(out)
        if self._pos >= len(view) and len(view):
            self._input, self._pos = memoryview(b""), 0
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def finish(self) -> None:
        """The body ended: it must have ended where its coding does."""
        if not self._inflate.eof:
            raise DecodingError(f"upstream's {self._coding} body ended before its end")
