"""The HTTP half every adapter shares: one request path, one streaming path, one error path.

A concrete adapter supplies the URL, headers and body, a reader for its
provider's error body (``error_facts``), and for streaming a small
synchronous ``StreamDecoder`` that turns lines into ``StreamChunk``s. This
module does the I/O, the deadline, and the mapping of every failure through
``classify``.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import Any, ClassVar, Protocol, TypeVar

from dataplane.chat import EmbedRequest, EmbedResponse, StreamChunk
from dataplane.config.model import ProviderConfig
from dataplane.errors import ProviderError, UpstreamBadRequest
from dataplane.upstream import UpstreamClient, UpstreamResponse, content_coded, encode_headers, text_encoding
from dataplane.upstream.errors import HTTPError

from .classify import ErrorFacts, classify_error, classify_transport, protocol_error
from .sse import EventTooLarge, SSEDecoder
from .wire import dumps, loads, without_bom

FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32: an embedding value beyond it is no embedding."""

T = TypeVar("T")

MAX_BODY_BYTES = 32 * 1024 * 1024
"""Largest unary answer read from an upstream, and most characters of answer a stream may carry
(``answer_chars``); more is an ``UpstreamProtocolError``."""
MAX_ERROR_BODY_BYTES = 64 * 1024
"""Of an error answer only this much is read: enough for any provider's error object."""
ERROR_BODY_WAIT = 2.0
"""Seconds an error answer's body is waited for once its head is in (it is a few hundred
bytes sent with the head); past them the answer is classified from its status and headers."""
MAX_EVENT_BYTES = 1024 * 1024
"""Largest stream line, SSE event or NDJSON line; a larger one is an ``UpstreamProtocolError``."""

_NEWLINE = re.compile(r"\r\n|\r|\n")
_SHAPE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError, ArithmeticError)
"""What parsers indexing into upstream JSON raise on a shape they did not expect. RecursionError:
re-parsing or re-encoding a nested value the upstream sent (tool-call arguments, a payload kept
for operators) past the interpreter's recursion limit. ArithmeticError: ``int()`` of a number
JSON allows and Python cannot hold (``1e999`` parses as infinity; ``OverflowError``)."""


class BodyTooLarge(Exception):
    """An upstream answer or stream line went past its size bound."""


class StreamDecoder(Protocol):
    """Turns a provider's stream, line by line, into normalized chunks.

    ``feed`` raises a ``ProviderError`` for in-band error events and malformed
    data; ``finish`` is called when the body ends and raises when the stream
    ended before the provider's terminator. ``done`` becomes true at the
    terminator, after which the rest of the body is not read.
    """

    done: bool
    event_stream: bool
    """True for SSE: a 2xx JSON body instead of an event stream is then an error answer."""

    def feed(self, line: str) -> Iterable[StreamChunk]: ...

    def finish(self) -> Iterable[StreamChunk]: ...


class HttpAdapter:
    """Base of the HTTP adapters: holds config, the shared client and the credential."""

    type_name: ClassVar[str]
    default_base_url: ClassVar[str] = ""

    def __init__(self, config: ProviderConfig, client: UpstreamClient, credential: str | None) -> None:
        self.config = config
        self._client = client
        self._credential = credential
        self._head: bytes | None = None
        self.base_url = (config.base_url or self.default_base_url).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"{self.type_name}: base_url must be an http(s) URL, not {config.base_url!r}")

    # -- hooks for the concrete adapters -------------------------------------------------------

    def headers(self) -> dict[str, str]:
        """Authentication and version headers sent with every request."""
        return {}

    def error_facts(self, payload: Any) -> ErrorFacts | None:
        """Read this provider's error body; None when ``payload`` is not an error."""
        return None

    # -- shared machinery ----------------------------------------------------------------------

    async def embed(self, model: str, request: EmbedRequest, *, timeout: float) -> EmbedResponse:
        """Adapters whose provider has no embeddings endpoint keep this refusal."""
        raise UpstreamBadRequest(
            f"{self.type_name}: this provider type has no embeddings endpoint", provider=self.type_name
        )

    async def aclose(self) -> None:
        """The shared client belongs to the node; an adapter holds nothing else to release."""

    def attempt_timeout(self, timeout: float) -> float:
        """The caller's time left, capped by the provider's configured ``timeout_s``."""
        return min(timeout, self.config.timeout_s) if self.config.timeout_s > 0 else timeout

    async def post_json(
        self, url: str, body: Mapping[str, Any], *, timeout: float, params: Mapping[str, str] | None = None
    ) -> Any:
        """POST ``body`` and return the parsed JSON answer, or raise a classified error.

        The answer is read in pieces up to ``MAX_BODY_BYTES`` (an error answer
        up to ``MAX_ERROR_BODY_BYTES``): an upstream cannot make the node hold
        more than that in memory.
        """
        timeout = self.attempt_timeout(timeout)
        # The whole call's deadline is the client's to keep: it bounds every wait by it.
        deadline = self._client.clock() + timeout
        try:
            response = await self._send(url, body, timeout=timeout, params=params, deadline=deadline)
            try:
                if response.status >= 400:
                    raise self.http_error(response.status, await self._error_text(response), response.headers)
                self._check_final(response.status)
                data = await self._read_bytes(response, MAX_BODY_BYTES)
            finally:
                response.close()
        except (HTTPError, TimeoutError) as exc:
            raise classify_transport(self.type_name, exc, credential=self._credential) from exc
        encoding = text_encoding(response.headers)
        # UTF-8 (nearly every answer) is parsed as bytes, without a decoded copy.
        document = (
            without_bom(data) if encoding == "utf-8" else without_bom(data.decode(encoding, errors="replace"))
        )
        payload = loads(self.type_name, document, credential=self._credential)
        # Some providers answer 200 with an error body (OpenAI-compatible servers, Mistral).
        self.raise_in_band(payload, status=response.status)
        return payload

    async def _send(
        self,
        url: str,
        body: Mapping[str, Any],
        *,
        timeout: float,
        params: Mapping[str, str] | None,
        deadline: float | None = None,
    ) -> UpstreamResponse:
        if self._head is None:
            # The adapter's headers are the same on every call (config and credential are fixed
            # for its life): checked and encoded once.
            self._head = encode_headers({**self.headers(), "Content-Type": "application/json"})
        return await self._client.request(
            "POST",
            url,
            headers=self._head,
            body=dumps(body),
            timeout=timeout,
            deadline=deadline,
            params=params,
        )

    async def _read_bytes(self, response: UpstreamResponse, limit: int) -> bytes:
        """The whole body, refused past ``limit`` bytes (declared or counted), never held beyond it."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self.malformed(f"answer of {int(declared)} bytes exceeds the {limit}-byte limit")
        data, more = await response.read(limit)
        if more:
            raise self.malformed(f"answer exceeds the {limit}-byte limit")
        return data

    async def _read_text(self, response: UpstreamResponse, limit: int, *, truncate: bool = False) -> str:
        """The body as text, read up to ``limit`` bytes; beyond it: cut (``truncate``) or refused.
        A content-coded (error) body is not read: "", its status and headers say what they say."""
        if content_coded(response.headers):
            return ""
        if not truncate:
            data = await self._read_bytes(response, limit)
        else:
            data, _ = await response.read(limit)
        return data.decode(text_encoding(response.headers), errors="replace")

    async def post_parsed(
        self,
        url: str,
        body: Mapping[str, Any],
        parse: Callable[[Any], T],
        *,
        timeout: float,
        params: Mapping[str, str] | None = None,
    ) -> T:
        """``post_json``, then ``parse`` the answer; a surprising shape is a protocol error."""
        payload = await self.post_json(url, body, timeout=timeout, params=params)
        # ``decoding``'s translation, without a generator context manager on every request.
        try:
            return parse(payload)
        except _SHAPE_ERRORS as exc:
            raise self.malformed(f"unexpected JSON shape ({type(exc).__name__})") from exc

    def vectors(self, rows: Iterable[Iterable[Any]], expected: int) -> tuple[tuple[float, ...], ...]:
        """Embedding rows as float tuples; one per input, each value a finite number that a
        float32 holds (what OpenAI's base64 answer and gRPC's ``repeated float`` carry), or
        the answer is malformed. A value beyond that range made the OpenAI door's base64
        packing raise (a 500 for an answer recorded as served); NaN and infinity (``float``
        takes the strings "nan" and "inf") reached callers as values."""
        vectors = tuple(tuple(float(x) for x in row) for row in rows)
        if len(vectors) != expected:
            raise self.malformed(f"{len(vectors)} embeddings for {expected} inputs")
        for i, vector in enumerate(vectors):
            # fsum is not finite for a NaN or an infinity; no sum of float32 values overflows it.
            if vector and (
                not math.isfinite(math.fsum(vector))
                or max(vector) > FLOAT32_MAX
                or min(vector) < -FLOAT32_MAX
            ):
                raise self.malformed(f"embedding {i} holds a value that is not a finite float32")
        return vectors

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """Turn the lookup errors of reading an unexpected JSON shape into a protocol error.

        Parsers index into upstream JSON freely; this is the one place where a
        wrong type or a missing key becomes ``UpstreamProtocolError`` instead
        of a crash.
        """
        try:
            yield
        except _SHAPE_ERRORS as exc:
            raise self.shape_error(exc) from exc

    def shape_error(self, exc: Exception) -> ProviderError:
        return self.malformed(f"unexpected JSON shape ({type(exc).__name__})")

    async def stream_chunks(
        self,
        url: str,
        make_body: Callable[[], Mapping[str, Any]],
        decoder: StreamDecoder,
        *,
        timeout: float,
        params: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[StreamChunk, None]:
        """Yield chunks as lines arrive; closing this generator closes the upstream response.

        Adapters return this generator itself from ``stream`` (not a wrapper
        around it), so the caller's ``aclose`` or cancellation reaches the HTTP
        response directly. ``make_body`` runs on first iteration: a request the
        provider cannot express fails there, like every other stream error.
        ``timeout``, the seconds left for the attempt, is also the whole stream's
        deadline (``UpstreamTimeout`` then); the provider's configured timeout
        bounds connecting and each wait for bytes. Once its first chunk is out,
        nothing above this bounds a stream (the dispatcher's deadline covers only
        the wait for that chunk), so an upstream that keeps each wait short (a
        byte, a comment, a keep-alive at a time) would otherwise hold the request,
        its connection and its budget reservation past the caller's deadline, or
        forever when the caller set none. The client keeps it with the
        connection's one timer: no timer per chunk.
        """
        deadline = self._client.clock() + timeout
        async with (
            self._open(
                url, make_body(), timeout=self.attempt_timeout(timeout), params=params, deadline=deadline
            ) as response,
            aclosing(bounded_lines(_text(response), MAX_EVENT_BYTES)) as pieces,
        ):
            if decoder.event_stream and _is_json(response):
                # Some servers answer a streaming request with a plain JSON error and 200.
                text = without_bom(await self._read_body(response, MAX_ERROR_BODY_BYTES))
                self.raise_in_band(loads(self.type_name, text, credential=self._credential))
                raise self.malformed("expected an event stream, got a JSON body", text)
            answered = 0  # characters of answer so far: bounded as a unary answer's bytes are
            ended = decoder.done
            while not ended:
                lines: list[str] | None
                try:
                    lines = await anext(pieces)
                except StopAsyncIteration:
                    lines, ended = None, True
                except BodyTooLarge:
                    raise self.malformed(f"a stream line exceeds the {MAX_EVENT_BYTES}-byte limit") from None
                except HTTPError as exc:
                    raise classify_transport(self.type_name, exc, credential=self._credential) from exc
                # Line by line as before (a line's chunks leave before the next line is
                # decoded), without a generator step or a context manager per line.
                for line in lines if lines is not None else (None,):
                    try:
                        chunks = list(decoder.feed(line) if line is not None else decoder.finish())
                    except _SHAPE_ERRORS as exc:
                        raise self.shape_error(exc) from exc
                    for chunk in chunks:
                        answered += answer_chars(chunk)
                        if answered > MAX_BODY_BYTES:
                            raise self.malformed(
                                f"a streamed answer exceeds the {MAX_BODY_BYTES}-character limit"
                            )
                        yield chunk
                    if decoder.done:
                        ended = True
                        break

    def http_error(self, status: int, text: str, headers: Mapping[str, str]) -> ProviderError:
        """Classify a non-2xx answer from its status, headers and (maybe non-JSON) body."""
        try:
            # The parser of answers, with its repairs and limits: an error body reads as the
            # same document in band (``raise_in_band``) would, up to orjson's 1024 levels.
            payload = loads(self.type_name, without_bom(text), credential=self._credential)
        except ProviderError:
            # Not JSON, or JSON no answer may be (``NaN``, ``1e999``, nested too deep).
            payload = None
        facts = self.read_error(payload) or ErrorFacts()
        return classify_error(
            self.type_name,
            status=status,
            facts=facts,
            body=text,
            headers=headers,
            credential=self._credential,
        )

    def _check_final(self, status: int) -> None:
        """Only a 2xx is an answer: a redirect (which the node never follows: the provider's
        URL is the operator's, not the upstream's to change) or a status no final answer
        has is malformed output, whatever its body says."""
        if 300 <= status < 400:
            raise self.malformed(f"a redirect (HTTP {status}), which the node does not follow")
        if not 200 <= status < 300:
            raise self.malformed(f"HTTP {status} is not a final answer")

    def raise_in_band(self, payload: Any, *, status: int | None = None) -> None:
        """Raise the classified error if ``payload`` (a body or stream event) is an error."""
        facts = self.read_error(payload)
        if facts is not None:
            try:
                said: str | None = json.dumps(payload)
            except RecursionError:
                # orjson parsed it (up to 1024 levels), but ``json`` cannot re-encode that deep:
                # the facts read from it are what operators get instead.
                said = None
            raise classify_error(
                self.type_name,
                status=None if status is None or status < 400 else status,
                facts=facts,
                body=said,
                credential=self._credential,
            )

    def read_error(self, payload: Any) -> ErrorFacts | None:
        """``error_facts``, never raising: an error body (or event) of a shape its reader did not
        expect is still an error, with no facts (its status, if any, decides). Error bodies are
        read outside the nets of answer parsing (``decoding``, ``post_parsed``, the stream's), so
        the reader's ``AttributeError`` on ``{"error": "x"}`` once escaped the adapter: the caller
        got INTERNAL, no fallback was tried and no breaker counted the upstream's failure."""
        try:
            return self.error_facts(payload)
        except _SHAPE_ERRORS:
            return ErrorFacts()

    def parse_event(self, data: str) -> Any:
        """Parse one stream event's JSON, raising the provider's in-band error if it is one."""
        payload = loads(self.type_name, data, credential=self._credential)
        self.raise_in_band(payload)
        return payload

    def malformed(self, problem: str, body: str | None = None) -> ProviderError:
        """The upstream answered 2xx but not in its documented format (``problem``: our words)."""
        return protocol_error(self.type_name, problem, body, credential=self._credential)

    @asynccontextmanager
    async def _open(
        self,
        url: str,
        body: Mapping[str, Any],
        *,
        timeout: float,
        params: Mapping[str, str] | None,
        deadline: float,
    ) -> AsyncIterator[UpstreamResponse]:
        try:
            response = await self._send(url, body, timeout=timeout, params=params, deadline=deadline)
        except HTTPError as exc:
            raise classify_transport(self.type_name, exc, credential=self._credential) from exc
        try:
            if response.status >= 400:
                raise self.http_error(response.status, await self._error_text(response), response.headers)
            self._check_final(response.status)
            yield response
        finally:
            response.close()

    async def _error_text(self, response: UpstreamResponse) -> str:
        """Up to ``MAX_ERROR_BODY_BYTES`` of an error answer's body, as text; "" when it does
        not come within ``ERROR_BODY_WAIT`` seconds or breaks off. The status and headers
        (Retry-After) classify the answer without it: a 429 whose body stalled was held for
        the provider's whole timeout, then reported (and counted by the breaker) as a timeout."""
        try:
            async with asyncio.timeout(ERROR_BODY_WAIT):
                return await self._read_text(response, MAX_ERROR_BODY_BYTES, truncate=True)
        except (HTTPError, TimeoutError):
            return ""

    async def _read_body(self, response: UpstreamResponse, limit: int) -> str:
        """At most ``limit`` bytes of an error body (the rest is not read)."""
        try:
            return await self._read_text(response, limit, truncate=True)
        except HTTPError as exc:
            raise classify_transport(self.type_name, exc, credential=self._credential) from exc


async def bounded_lines(chunks: AsyncIterator[str], limit: int) -> AsyncGenerator[list[str], None]:
    """The lines (without their CRLF, CR or LF endings) of a text stream, as lists: the
    lines each piece completes (one step of this generator per read, not per line);
    raises ``BodyTooLarge`` when a line passes ``limit`` characters, before it is held
    whole (after the lines before it).

    A line splitter without a bound buffers a line of any length; an upstream that
    never sends a newline would grow the node's memory without bound.
    """
    pending: list[str] = []
    size = 0
    skip_lf = False  # the last piece ended in CR: an LF opening the next one belongs to it
    async for text in chunks:
        if skip_lf and text.startswith("\n"):
            text = text[1:]
        skip_lf = False
        pos = 0
        lines: list[str] = []
        while (match := _NEWLINE.search(text, pos)) is not None:
            pending.append(text[pos : match.start()])
            line = "".join(pending)
            if len(line) > limit:
                if lines:
                    yield lines
                raise BodyTooLarge
            lines.append(line)
            pending, size, pos = [], 0, match.end()
            skip_lf = match.group() == "\r" and pos == len(text)
        if pos < len(text):
            pending.append(text[pos:])
            size += len(text) - pos
            if size > limit:
                if lines:
                    yield lines
                raise BodyTooLarge
        if lines:
            yield lines
    if pending:
        line = "".join(pending)
        if line:
            yield [line]


async def _text(response: UpstreamResponse) -> AsyncGenerator[str, None]:
    """The body as text, piece by piece (a character split between pieces is kept whole).

    UTF-8 with a leading byte order mark dropped, as an event stream is decoded (WHATWG):
    kept, it would open the first line, whose field (``\ufeffdata``) no decoder knows.
    """
    encoding = text_encoding(response.headers)
    decoder = codecs.getincrementaldecoder("utf-8-sig" if encoding == "utf-8" else encoding)(errors="replace")
    async for chunk in response:
        text = decoder.decode(chunk)
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def answer_chars(chunk: StreamChunk) -> int:
    """Characters of answer ``chunk`` adds: its text, tool-call ids, names and argument fragments.

    What the node holds of a stream (the answer assembled for its digest and checks, the
    arguments a decoder checks whole) grows with these; an upstream streaming without end
    would otherwise grow it for as long as the deadline lets it. Ids count: calls without a
    name or arguments (an id, the node's own when the upstream sent none) still take room.
    """
    size = len(chunk.text)
    for call in chunk.tool_calls:
        size += len(call.id) + len(call.name) + len(call.arguments_fragment)
    return size


def _is_json(response: UpstreamResponse) -> bool:
    media_type: str = response.headers.get("content-type", "")
    return media_type.split(";")[0].strip().lower() == "application/json"


class SSEStreamDecoder(ABC):
    """Base of the SSE decoders: frames events, parses their JSON, checks the stream really ended.

    Subclasses implement ``on_event`` and say what the missing terminator is
    called; ``complete`` is whether the stream may end here.
    """

    missing_terminator: ClassVar[str] = "the stream's terminator"
    event_stream = True

    def __init__(self, adapter: HttpAdapter) -> None:
        self.adapter = adapter
        self._sse = SSEDecoder(max_event_chars=MAX_EVENT_BYTES)
        self.done = False

    @property
    def complete(self) -> bool:
        return self.done

    def feed(self, line: str) -> Iterable[StreamChunk]:
        try:
            event = self._sse.feed(line)
        except EventTooLarge:
            raise self.adapter.malformed(f"a stream event exceeds the {MAX_EVENT_BYTES}-byte limit") from None
        return self.on_event(self.event_object(event.data)) if event is not None else ()

    def finish(self) -> Iterable[StreamChunk]:
        event = self._sse.flush()
        chunks = list(self.on_event(self.event_object(event.data))) if event is not None else []
        if not self.complete:
            raise self.adapter.malformed(f"stream ended before {self.missing_terminator}")
        return chunks

    def event_object(self, data: str) -> dict[str, Any] | None:
        """The event's JSON object; None for a non-JSON sentinel the subclass handles (``[DONE]``)."""
        if data.strip() == "[DONE]":
            return None
        payload = self.adapter.parse_event(data)
        if not isinstance(payload, dict):
            raise self.adapter.malformed("stream event is not an object", data)
        return payload

    @abstractmethod
    def on_event(self, payload: dict[str, Any] | None) -> Iterable[StreamChunk]:
        """Normalized chunks for one event (``None`` for a non-JSON sentinel such as ``[DONE]``)."""
