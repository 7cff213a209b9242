"""Output contracts: does an answer meet the JSON schema its request asked for?

Each distinct schema is compiled once per node worker (cached by the SHA-256 of its canonical
JSON, least recently used first out, bounded by count and by memory), with ``jsonschema-rs``: measured
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
MAX_SCHEMA_COST = 64 * 1024 * 1024
"""Bytes the compiled schemas kept may take, by ``schema_cost``'s estimate. A count alone
bounded nothing: callers choose the schemas, and one 90-character schema with one pattern
compiles to ~9 MiB (``^(?=x)(\\w{1,100}\\s){1,400}$``: Unicode classes, counted repetition),
so 512 of them kept 4.5 GB per worker."""
ENTRY_COST = 8 * 1024
"""A compiled schema's fixed cost (measured: ~3 KiB for a small object schema)."""
CHAR_COST = 64
"""Per character of the schema's canonical JSON (measured: ~22 bytes for large schemas of
many properties, enums or constant alternatives)."""
REGEX_COST = 16 * 1024 * 1024
"""Per regular expression (``pattern``, each ``patternProperties`` key): its compiled
automata are bounded by the regex engine's size limits, not by its text (measured: up to
~12 MiB for one pattern; one needing more is refused as too big by the engine)."""


def schema_cost(schema: Any, chars: int) -> int:
    """What keeping ``schema`` (``chars`` characters of canonical JSON) compiled costs, at
    most: bytes, as ``MAX_SCHEMA_COST`` counts them."""
    regexes = 0
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            pattern = item.get("pattern")
            if isinstance(pattern, str):
                regexes += 1
            keyed = item.get("patternProperties")
            if isinstance(keyed, dict):
                regexes += len(keyed)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return ENTRY_COST + CHAR_COST * chars + REGEX_COST * regexes


class Contracts:
    """Compiled response schemas, shared by every request on the node: at most ``limit`` of
    them and ``budget`` bytes by ``schema_cost``; a schema costing more than ``budget`` is
    compiled for its request and not kept."""

    __slots__ = ("_budget", "_cache", "_limit", "compiled", "cost")

    def __init__(self, limit: int = MAX_SCHEMAS, budget: int = MAX_SCHEMA_COST) -> None:
        self._cache: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
        self._limit = limit
        self._budget = budget
        self.compiled = 0
        """How many schemas were compiled (a cache miss each)."""
        self.cost = 0
        """What the schemas kept cost, by ``schema_cost``."""

    def __len__(self) -> int:
        return len(self._cache)

    def validator(self, schema: dict[str, Any]) -> Any:
        """The compiled ``schema``: from the cache, or compiled now and kept."""
        canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).digest()
        kept = self._cache.get(digest)
        if kept is not None:
            self._cache.move_to_end(digest)
            return kept[0]
        found = jsonschema_rs.Draft202012Validator(schema, offline=True)
        self.compiled += 1
        cost = schema_cost(schema, len(canonical))
        if cost > self._budget:
            return found
        self._cache[digest] = (found, cost)
        self.cost += cost
        while len(self._cache) > self._limit or self.cost > self._budget:
            _, (_, old) = self._cache.popitem(last=False)
            self.cost -= old
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
