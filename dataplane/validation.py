"""Request checks that need no configuration; each failure names the field.

Run on the converted request (``dataplane.chat`` types). Checks that depend on
the chosen model (``max_output_tokens`` above its maximum) run after routing,
in the pipeline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import multiprocessing
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any

from dataplane.chat import ChatRequest, EmbedRequest, Role
from dataplane.errors import CheckUnavailable, DeadlineExceeded, InvalidRequest, clipped, shown

log = logging.getLogger("signalbox.dataplane.validation")

# Matched whole (``fullmatch``): "$" would also match before a trailing newline.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CORRELATION_ID = re.compile(r"[\x21-\x7e]{1,128}")
MAX_STOP = 4
"""Stop sequences per request: OpenAI's limit (Gemini takes 5). More were sent on and came
back as the provider's 400, which names no field, or were served by one provider and refused
by the next one of the same route."""
MAX_EMBED_INPUTS = 2048
MAX_MESSAGES = 2048
"""Messages per request: OpenAI's limit."""
MAX_CONTENT_PARTS = 8192
"""Content parts of all of a request's messages together (OpenAI takes 500 images a request)."""
MAX_TOOL_CALLS = 8192
"""Tool calls of all of a request's assistant messages together."""
# Each message, part and call is converted, validated, governed and estimated in Python on
# the event loop: a 16 MB body of 540,000 one-word messages stalled every other request of
# its worker for seconds. These counts have no use at that size; they are checked by the
# doors before a message is converted, and with each message's counts only.


def check_stop_count(count: int, field: str) -> None:
    if count > MAX_STOP:
        raise InvalidRequest(field, f"{count} stop sequences, more than the limit of {MAX_STOP}")


def check_counts(messages: int, sizes: Iterable[tuple[int, int]]) -> None:
    """``InvalidRequest`` naming the first count over its limit: ``messages`` messages whose
    (content parts, tool calls) are ``sizes``, in order (read only up to ``MAX_MESSAGES``)."""
    if messages > MAX_MESSAGES:
        raise InvalidRequest("messages", f"{messages} messages, more than the limit of {MAX_MESSAGES}")
    parts = calls = 0
    for i, (content, tool_calls) in enumerate(sizes):
        parts += content
        calls += tool_calls
        if parts > MAX_CONTENT_PARTS:
            raise InvalidRequest(
                f"messages[{i}].content",
                f"the messages hold more than the limit of {MAX_CONTENT_PARTS} content parts in all",
            )
        if calls > MAX_TOOL_CALLS:
            raise InvalidRequest(
                f"messages[{i}].tool_calls",
                f"the messages hold more than the limit of {MAX_TOOL_CALLS} tool calls in all",
            )


def is_correlation_id(value: str) -> bool:
    """Whether a caller-supplied id is safe to echo in metadata, headers and logs."""
    return _CORRELATION_ID.fullmatch(value) is not None


def correlation_id(value: str, field: str = "correlation_id") -> str:
    """Accept a caller-supplied id only if it is safe to echo in metadata and logs."""
    if not is_correlation_id(value):
        raise InvalidRequest(field, "must be 1-128 printable ASCII characters without spaces")
    return value


def _check_range(value: float | None, field: str, low: float, high: float, *, low_open: bool = False) -> None:
    if value is None:
        return
    ok = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise InvalidRequest(field, f"{value} is outside {bracket}{low:g}, {high:g}]")


class SchemaVerdicts:
    """What is known about JSON schemas already checked: SHA-256 of the canonical text -> why
    it is not a valid JSON Schema (None: valid). Least recently used first out.

    Memory is bounded by ``budget`` bytes of the cache's own accounting (digest, verdict text
    and a fixed per-entry overhead), never by the size of the schemas: a schema itself is
    not kept. Thread-safe: verdicts are stored from the checker's completion callbacks.
    """

    ENTRY_OVERHEAD = 200
    """Bytes an entry is charged besides its digest and verdict (dict slot, objects)."""

    def __init__(self, budget: int = 1024 * 1024) -> None:
        self.budget = budget
        self.bytes = 0
        self._entries: OrderedDict[bytes, str | None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def cost(verdict: str | None) -> int:
        return SchemaVerdicts.ENTRY_OVERHEAD + 32 + (len(verdict.encode()) if verdict else 0)

    def get(self, digest: bytes) -> str | Unknown | None:
        with self._lock:
            if digest not in self._entries:
                return UNKNOWN
            self._entries.move_to_end(digest)
            return self._entries[digest]

    def put(self, digest: bytes, verdict: str | None) -> None:
        with self._lock:
            if digest in self._entries:
                self._entries.move_to_end(digest)
                return
            self._entries[digest] = verdict
            self.bytes += self.cost(verdict)
            while self.bytes > self.budget and self._entries:
                _, old = self._entries.popitem(last=False)
                self.bytes -= self.cost(old)


class Unknown:
    """A schema not checked yet (``SchemaVerdicts.get``)."""


UNKNOWN = Unknown()

SCHEMA_VERDICTS = SchemaVerdicts()
"""The node's verdicts (one per process)."""

_MAX_VERDICT_CHARS = 300

_pool: Executor | None = None
_pool_lock = threading.Lock()


def _checker() -> Executor:
    """Where uncached schemas are checked, one at a time: a process started on first use.

    A process, not a thread: checking a large schema is seconds of pure Python, and a
    thread holding the GIL that long stalls the event loop at its every switch. Where no
    process can be made (no working semaphores), a thread is still better than the loop."""
    global _pool
    with _pool_lock:
        if _pool is None:
            try:
                _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            except (OSError, ImportError, NotImplementedError) as exc:
                log.warning("schema checks run in a thread, no process could be made: %s", exc)
                _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="schema-check")
        return _pool


def _discard_checker(broken: Executor) -> None:
    global _pool
    with _pool_lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


def _digest(schema: dict[str, Any]) -> tuple[bytes, str]:
    """SHA-256 of the schema's canonical JSON text, and the text."""
    canonical = json.dumps(schema, sort_keys=True)
    return hashlib.sha256(canonical.encode()).digest(), canonical


def _schema_problem(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is not a valid JSON Schema, or None (about 0.2 ms per subschema).

    jsonschema is imported here, in the checker process, not in every node and control plane
    process that imports this module (~0.09 s of CPU each)."""
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
    from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        problem = f"not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}"
        return clipped(problem, _MAX_VERDICT_CHARS)
    except RecursionError:
        return "nested too deeply to check"
    except Exception as exc:  # the checker itself failed on this input: refuse it, keep serving
        return f"could not be checked as a JSON Schema ({type(exc).__name__})"
    return None


def _problems(canonical: list[str]) -> list[str | None]:
    """The verdict on each schema, given as canonical JSON text (runs in the checker process)."""
    return [_schema_problem(json.loads(text)) for text in canonical]


def _schemas(request: ChatRequest) -> list[tuple[str, dict[str, Any]]]:
    """(field, schema) of every JSON schema in the request, in field order."""
    found = [(f"tools[{i}].parameters_json_schema", t.parameters) for i, t in enumerate(request.tools)]
    rf = request.response_format
    if rf is not None and rf.schema is not None:
        found.append(("response_format.json_schema", rf.schema))
    return found


_Unchecked = list[tuple[str, bytes, str]]
"""(field, digest, canonical text) of schemas without a verdict yet."""


def _known(request: ChatRequest, verdicts: SchemaVerdicts) -> tuple[dict[str, str | None], _Unchecked]:
    known: dict[str, str | None] = {}
    unknown: _Unchecked = []
    for field, schema in _schemas(request):
        digest, canonical = _digest(schema)
        verdict = verdicts.get(digest)
        if isinstance(verdict, Unknown):
            unknown.append((field, digest, canonical))
        else:
            known[field] = verdict
    return known, unknown


def _store(unknown: _Unchecked, found: list[str | None], verdicts: SchemaVerdicts) -> dict[str, str | None]:
    for (_, digest, _), problem in zip(unknown, found, strict=True):
        verdicts.put(digest, problem)
    return {field: problem for (field, _, _), problem in zip(unknown, found, strict=True)}


def _raise_first(request: ChatRequest, verdicts: dict[str, str | None]) -> None:
    for field, _ in _schemas(request):
        problem = verdicts.get(field)
        if problem is not None:
            raise InvalidRequest(field, problem)


MAX_SCHEMA_OBJECTS = 5_000
"""JSON objects (subschemas) of one schema the node checks. The checker takes ~0.25 ms each (a
5,000-object schema ~1.3 s): a schema of 150,000 empty ``anyOf`` branches fit the size limits
and held the checker, and every caller with a new schema behind it, for 37 s. OpenAI's
structured outputs take at most 5,000 object properties; Gemini's translation as many nodes."""
MAX_PENDING_CHECKS = 16
"""Checks of new schemas waiting or running in one node worker; past it, refused UNAVAILABLE
(retry) rather than queued without bound."""
MAX_PENDING_PER_TENANT = 2
"""Of those, a tenant's: one tenant's new schemas cannot take the checker from the others."""


class _Job:
    """One check in the checker: the requests waiting for it (the same schemas, by digest,
    share it) and the tenant that asked first."""

    __slots__ = ("future", "pool", "result", "tenant", "waiting")

    def __init__(self, future: Future[list[str | None]], pool: Executor, tenant: str) -> None:
        self.future = future
        self.pool = pool
        self.tenant = tenant
        self.waiting = 0
        self.result = asyncio.wrap_future(future)
        """What the waiters await (each shielded: one leaving cancels it for none). Cancelled
        when the last one leaves, which cancels ``future`` too if it has not started."""


_jobs: dict[tuple[bytes, ...], _Job] = {}
"""Checks not finished yet, by their schemas' digests (event loop only)."""


def _too_many_objects(schema: object) -> bool:
    """More than ``MAX_SCHEMA_OBJECTS`` JSON objects in ``schema`` (counted up to one past)."""
    count, stack = 0, [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            count += 1
            if count > MAX_SCHEMA_OBJECTS:
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _admit(unknown: _Unchecked, request: ChatRequest, tenant: str) -> None:
    """Refuse a check the node will not queue: a schema too large to check, or a checker
    already busy with too many, or with too many of this tenant's."""
    schemas = dict(_schemas(request))
    for field, _, _ in unknown:
        if _too_many_objects(schemas[field]):
            raise InvalidRequest(
                field,
                f"has more than {MAX_SCHEMA_OBJECTS} subschemas (JSON objects), more than the node checks",
            )
    if len(_jobs) >= MAX_PENDING_CHECKS:
        raise CheckUnavailable(
            f"the node's schema checker has {len(_jobs)} new schemas to check already; retry shortly"
        )
    if sum(1 for job in _jobs.values() if job.tenant == tenant) >= MAX_PENDING_PER_TENANT:
        raise CheckUnavailable(
            f"tenant {tenant} has {MAX_PENDING_PER_TENANT} new schemas being checked already; retry once they are"
        )


async def check_schemas(
    request: ChatRequest,
    verdicts: SchemaVerdicts = SCHEMA_VERDICTS,
    *,
    tenant: str = "",
    timeout: float | None = None,
) -> None:
    """``InvalidRequest`` naming the first tool or response schema that is not a valid JSON
    Schema. Known schemas are answered from ``verdicts``; the others are checked in the
    checker process, so a request with huge new schemas stalls no other caller.

    Bounded (``_admit``): a schema of more than ``MAX_SCHEMA_OBJECTS`` subschemas is refused
    unchecked, and so is a check past ``MAX_PENDING_CHECKS`` (or ``MAX_PENDING_PER_TENANT``
    of ``tenant``'s) waiting already. Requests with the same new schemas wait for one check.
    Waited for at most ``timeout`` seconds (the request's deadline: ``DeadlineExceeded``
    naming the schema); a check no request waits for any more is dropped unless it has
    started. The verdict of one that ran is kept, even when its callers have gone."""
    known, unknown = _known(request, verdicts)
    if unknown:
        key = tuple(digest for _, digest, _ in unknown)
        job = _jobs.get(key)
        if job is None or job.result.cancelled():  # cancelled: its waiters have all gone
            _admit(unknown, request, tenant)
            job = _jobs[key] = _Job(*_submit(unknown, verdicts), tenant)
            job.future.add_done_callback(partial(_forgotten, asyncio.get_running_loop(), key, job))
        job.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                found = await asyncio.shield(job.result)
        except TimeoutError:
            raise DeadlineExceeded(
                f"{unknown[0][0]}: not checked as a JSON Schema within the request's deadline (the"
                " node's schema checker was busy); retry, or send it with a longer deadline"
            ) from None
        except Exception as exc:  # the checker failed, not the schema (a verdict is never an exception)
            if isinstance(exc, BrokenProcessPool):
                _discard_checker(job.pool)
            else:
                log.error("schema check failed: %s", type(exc).__name__)
            raise CheckUnavailable("the node's schema checker stopped; retry the request") from exc
        finally:
            job.waiting -= 1
            if not job.waiting and not job.result.done():
                job.result.cancel()  # no one waits: dropped if it has not started
        known.update({field: problem for (field, _, _), problem in zip(unknown, found, strict=True)})
    _raise_first(request, known)


def _submit(unknown: _Unchecked, verdicts: SchemaVerdicts) -> tuple[Future[list[str | None]], Executor]:
    pool = _checker()
    try:
        job = pool.submit(_problems, [canonical for _, _, canonical in unknown])
    except (BrokenProcessPool, OSError, RuntimeError) as exc:  # RuntimeError: shut down meanwhile
        _discard_checker(pool)
        raise CheckUnavailable("the node's schema checker stopped; retry the request") from exc

    def keep(done: Future[list[str | None]]) -> None:
        if not done.cancelled() and done.exception() is None:
            _store(unknown, done.result(), verdicts)

    job.add_done_callback(keep)
    return job, pool


def _forgotten(loop: asyncio.AbstractEventLoop, key: tuple[bytes, ...], job: _Job, _: object) -> None:
    """A check ended (the checker's thread): off the loop's list of pending ones."""
    try:
        loop.call_soon_threadsafe(_forget, key, job)
    except RuntimeError:  # the loop is closed: nothing else touches the list any more
        _forget(key, job)


def _forget(key: tuple[bytes, ...], job: _Job) -> None:
    if _jobs.get(key) is job:
        del _jobs[key]


def check_schemas_now(request: ChatRequest, verdicts: SchemaVerdicts = SCHEMA_VERDICTS) -> None:
    """``check_schemas`` on the calling thread (for callers off the request path)."""
    known, unknown = _known(request, verdicts)
    known.update(_store(unknown, _problems([canonical for _, _, canonical in unknown]), verdicts))
    _raise_first(request, known)


def validate_chat(request: ChatRequest, *, require_messages: bool = True, schemas: bool = True) -> None:
    """Raise ``InvalidRequest`` for the first problem found.

    ``require_messages=False`` accepts a request without messages (a dry run of
    routing asks about the policy alone); every other rule holds. ``schemas=False``
    leaves out whether the tool and response schemas are valid JSON Schemas: the
    request path awaits ``check_schemas`` for that, off the event loop.
    """
    if require_messages and not request.messages:
        raise InvalidRequest("messages", "must not be empty")
    check_counts(len(request.messages), ((len(m.content), len(m.tool_calls)) for m in request.messages))
    for i, message in enumerate(request.messages):
        # The field's name is only made for an error: this runs for every message of every request.
        if message.role is Role.TOOL and not message.tool_call_id:
            raise InvalidRequest(f"messages[{i}].tool_call_id", "required for a tool message")
        if message.tool_calls and message.role is not Role.ASSISTANT:
            raise InvalidRequest(f"messages[{i}].tool_calls", "only assistant messages carry tool calls")
        if not message.content and not message.tool_calls:
            raise InvalidRequest(f"messages[{i}].content", "must not be empty")
    p = request.params
    if p.max_output_tokens is not None and p.max_output_tokens < 1:
        raise InvalidRequest("params.max_output_tokens", "must be at least 1")
    _check_range(p.temperature, "params.temperature", 0.0, 2.0)
    _check_range(p.top_p, "params.top_p", 0.0, 1.0, low_open=True)
    _check_range(p.presence_penalty, "params.presence_penalty", -2.0, 2.0)
    _check_range(p.frequency_penalty, "params.frequency_penalty", -2.0, 2.0)
    check_stop_count(len(p.stop), "params.stop")
    if any(not s for s in p.stop):
        raise InvalidRequest("params.stop", "stop sequences must not be empty")
    names: set[str] = set()
    for i, tool in enumerate(request.tools):
        if not _TOOL_NAME.fullmatch(tool.name):
            raise InvalidRequest(f"tools[{i}].name", "must be 1-64 letters, digits, '_' or '-'")
        if tool.name in names:
            raise InvalidRequest(f"tools[{i}].name", f"duplicate tool {shown(tool.name)}")
        names.add(tool.name)
    choice = request.tool_choice
    if choice is not None and choice.mode == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice.tool_name", "required when mode is TOOL")
        if choice.name not in names:
            raise InvalidRequest("tool_choice.tool_name", f"no tool named {shown(choice.name)} in tools")
    if choice is not None and choice.mode == "required" and not request.tools:
        raise InvalidRequest("tool_choice.mode", "REQUIRED needs at least one tool")
    if schemas:
        check_schemas_now(request)


def validate(request: ChatRequest | EmbedRequest) -> None:
    """Raise ``InvalidRequest`` for the first problem of a chat or embeddings request,
    except invalid JSON Schemas (``check_schemas``, awaited by the pipeline)."""
    if isinstance(request, EmbedRequest):
        validate_embed(request)
    else:
        validate_chat(request, schemas=False)


def validate_embed(request: EmbedRequest) -> None:
    if not request.inputs:
        raise InvalidRequest("inputs", "must not be empty")
    if len(request.inputs) > MAX_EMBED_INPUTS:
        raise InvalidRequest("inputs", f"at most {MAX_EMBED_INPUTS} inputs per request")
    for i, text in enumerate(request.inputs):
        if not text:
            raise InvalidRequest(f"inputs[{i}]", "must not be empty")
    if request.dimensions is not None and request.dimensions < 1:
        raise InvalidRequest("dimensions", "must be at least 1")
