"""Output contracts: does an answer meet the JSON schema its request asked for?

Each distinct schema is compiled once per node (cached by the SHA-256 of its canonical
JSON, least recently used first out, bounded by count), with ``jsonschema-rs``: measured
on this machine against ``fastjsonschema`` for a typical response schema, compiling took
17 us vs 1,364 us and validating 1.9 us vs 3.8 us; and it builds no Python source from
the caller's schema (fastjsonschema generates code and ``exec``s it), runs patterns with a
backtracking limit, and is told never to fetch a remote ``$ref`` (``offline``).

A problem is reported by where it is (the answer's JSON path and the schema keyword),
never with the answer's values or the library's message (which quotes them).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import jsonschema_rs

MAX_SCHEMAS = 512
"""Distinct response schemas kept compiled; a node sees a handful per application."""


class Contracts:
    """Compiled response schemas, shared by every request on the node."""

    __slots__ = ("_cache", "_limit", "compiled")

    def __init__(self, limit: int = MAX_SCHEMAS) -> None:
        self._cache: OrderedDict[bytes, Any] = OrderedDict()
        self._limit = limit
        self.compiled = 0
        """How many schemas were compiled (a cache miss each)."""

    def __len__(self) -> int:
        return len(self._cache)

    def validator(self, schema: dict[str, Any]) -> Any:
        """The compiled ``schema``: from the cache, or compiled now and kept."""
        digest = hashlib.sha256(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()).digest()
        found = self._cache.get(digest)
        if found is not None:
            self._cache.move_to_end(digest)
            return found
        found = jsonschema_rs.Draft202012Validator(schema, offline=True)
        self.compiled += 1
        self._cache[digest] = found
        if len(self._cache) > self._limit:
            self._cache.popitem(last=False)
        return found

    def problem(self, schema: dict[str, Any], answer: str) -> tuple[str, str] | None:
        """Why ``answer`` (the model's text) does not meet ``schema``: (JSON path in the
        answer, what is wrong); None when it does."""
        try:
            document = json.loads(answer)
        except (ValueError, RecursionError):
            return "$", "the answer is not JSON"
        try:
            validator = self.validator(schema)
        except (jsonschema_rs.ValidationError, ValueError) as exc:
            # The request's schema passed the node's check (Draft 2020-12) but cannot be
            # compiled here (a remote $ref, say): the answer cannot be said to meet it.
            return "$", f"the response schema cannot be compiled ({type(exc).__name__})"
        for error in validator.iter_errors(document):
            return _path(error.instance_path), f"breaks schema keyword {_keyword(error.schema_path)!r}"
        return None


def _path(parts: Iterable[str | int]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out if len(out) <= 200 else out[:200] + "..."


def _keyword(schema_path: Iterable[str | int]) -> str:
    keyword = ""
    for part in schema_path:
        if isinstance(part, str):
            keyword = part
    return keyword[:64]
