"""Structured logs: one JSON object per line, with the request's correlation id and tenant.

``--log-format json`` (the default when stderr is not a terminal: a service manager, a
container, a pipe) writes each event as one line::

    {"ts": "2026-11-30T06:25:01.123Z", "level": "WARNING", "logger": "signalbox.dataplane.quota",
     "msg": "...", "service": "dataplane", "node": "edge-1", "worker": 0,
     "correlation_id": "...", "tenant": "t-acme"}

``text`` keeps the human format. ``service``, ``node`` and ``worker`` are the process's
(``configure``); ``correlation_id`` and ``tenant`` are the request's, bound by the pipeline
with ``bind_request`` (a context variable: each gRPC call and HTTP request runs in its own
task, so one request's ids never show on another's lines). Levels are chosen so that INFO is
quiet under load: nothing is logged per request above DEBUG unless it failed. Messages are
bounded (``MAX_MESSAGE_CHARS``) and never carry request content or secrets: what is logged is
decided where the log call is, and tests scan every line for secrets.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

MAX_MESSAGE_CHARS = 8192
# What ends a line for some reader of a log: ``str.splitlines`` splits on all of these, and
# JSON leaves the last three unescaped. A caller's string (a request id, a model or key name,
# a provider's error text) carrying one would otherwise start a forged line.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_JSON_ESCAPES = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x7f\x85\u2028\u2029"})
_TEXT_ESCAPES = str.maketrans(
    {
        c: f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
        for c in [*map(chr, range(0x20)), "\x7f", *_LINE_BREAKS]
    }
    | {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
)
_request: ContextVar[tuple[str, str]] = ContextVar("signalbox_log_request", default=("", ""))


def bind_request(correlation_id: str, tenant: str = "") -> None:
    """The request the current task serves, for its log lines."""
    _request.set((correlation_id, tenant))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the process's fields and the request's, when bound."""

    def __init__(self, process: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._process = dict(process or {})

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "... (cut)"
        seconds = int(record.created)
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": message,
            **self._process,
        }
        correlation_id, tenant = _request.get()
        if correlation_id:
            event["correlation_id"] = correlation_id
        if tenant:
            event["tenant"] = tenant
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)[-MAX_MESSAGE_CHARS:]
        return json.dumps(event, ensure_ascii=False, default=str).translate(_JSON_ESCAPES)


class TextFormatter(logging.Formatter):
    """The human format, one line per record: control characters and line breaks in the
    message are escaped (``\\n``, ``\\u2028``); a traceback's lines follow, each indented
    with ``  | `` so that none can pass for a record of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "... (cut)"
        record.message = message.translate(_TEXT_ESCAPES)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(stack_info)


def _indented(text: str) -> str:
    lines = text.splitlines()
    return "\n".join("  | " + line.translate(_TEXT_ESCAPES) for line in lines)


def formatter(log_format: str, **process: Any) -> logging.Formatter:
    """The formatter of ``log_format`` (``json`` or ``text``); ``process``: as ``configure``'s."""
    if log_format == "json":
        return JsonFormatter({k: v for k, v in process.items() if v not in (None, "")})
    return TextFormatter()


def configure(level: int, log_format: str, **process: Any) -> None:
    """Install the format on the root logger, unless it has handlers already: ``json``,
    ``text``, or ``auto`` (JSON unless stderr is a terminal). ``process``: fields every line
    carries (service, node, worker)."""
    fmt = ("text" if sys.stderr.isatty() else "json") if log_format == "auto" else log_format
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt, **process))
    # As basicConfig: a process whose logging is set up already (a test runner, an embedding
    # application) keeps its handlers.
    logging.basicConfig(level=level, handlers=[handler])
