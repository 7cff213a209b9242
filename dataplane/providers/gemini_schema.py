"""JSON Schema (as callers write tool parameters) to Gemini's ``Schema``, an OpenAPI 3.0 subset.

Gemini rejects a function declaration whose schema carries a field its
``Schema`` object does not know (``$schema``, ``additionalProperties``, ...),
so tool parameters (and a ``json_schema`` response format) are translated,
not passed through:

- kept: ``type``, ``format``, ``title``, ``description``, ``nullable``,
  ``enum``, ``items``, ``properties``, ``required``, ``propertyOrdering``,
  ``anyOf``, ``minItems``/``maxItems``, ``minLength``/``maxLength``,
  ``minProperties``/``maxProperties``, ``minimum``/``maximum``, ``pattern``,
  ``default``, ``example``;
- rewritten: a type list such as ``["string", "null"]`` becomes ``type`` plus
  ``nullable`` (several non-null types become an ``anyOf``); ``oneOf`` becomes
  ``anyOf``; a one-element ``allOf`` is inlined; ``const`` becomes a
  one-value ``enum``; enum values become strings (JSON text for numbers and
  booleans, as Gemini's own integer-enum example does) and a ``null`` among
  them makes the schema ``nullable``; ``examples`` gives its first value as
  ``example``;
- local references (``#/$defs/Name``, ``#/definitions/Name``) are inlined;
  any other reference, a recursive one, a multi-part ``allOf``, tuple
  ``items`` or a schema past 32 levels or 5,000 nodes is refused with
  ``UpstreamBadRequest`` naming the tool and the JSON path;
- everything else (``$schema``, ``$id``, ``$defs``/``definitions``,
  ``additionalProperties``, ``patternProperties``, ``exclusiveMinimum``,
  ``not``, ``if``/``then``/``else``, ``uniqueItems``, ...) is dropped: it
  constrains less, which the model's instructions must then carry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dataplane.errors import UpstreamBadRequest

_KEEP_AS_IS = frozenset(
    {
        "format",
        "title",
        "description",
        "nullable",
        "required",
        "propertyOrdering",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minProperties",
        "maxProperties",
        "minimum",
        "maximum",
        "pattern",
        "default",
        "example",
    }
)
MAX_DEPTH = 32
MAX_NODES = 5000


class _Translator:
    def __init__(self, root: Mapping[str, Any], what: str) -> None:
        self.root = root
        self.what = what
        self.nodes = 0

    def fail(self, path: str, problem: str) -> UpstreamBadRequest:
        return UpstreamBadRequest(f"gemini: {self.what}: {path}: {problem}", provider="gemini")

    def schema(self, node: object, path: str, depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(path, f"schema has more than {MAX_NODES} nodes once references are inlined")
        if depth > MAX_DEPTH:
            raise self.fail(path, f"schema is nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, bool):
            return {}  # true: anything; Gemini has no spelling for false either
        if not isinstance(node, Mapping):
            raise self.fail(path, "a schema must be an object")
        if "$ref" in node:
            target, refs = self.resolve(node["$ref"], path, refs)
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return self.schema(merged, path, depth, refs)
        all_of = node.get("allOf")
        if all_of is not None:
            if not isinstance(all_of, list) or len(all_of) != 1:
                raise self.fail(f"{path}.allOf", "only a one-element allOf can be expressed")
            part = all_of[0]
            if isinstance(part, Mapping) and "$ref" in part:
                part, refs = self.resolve(part["$ref"], f"{path}.allOf[0]", refs)
            if not isinstance(part, Mapping):
                raise self.fail(f"{path}.allOf[0]", "a schema must be an object")
            merged = {**part, **{k: v for k, v in node.items() if k != "allOf"}}
            return self.schema(merged, path, depth, refs)

        out: dict[str, Any] = {k: node[k] for k in _KEEP_AS_IS if k in node}
        nullable = False
        type_ = node.get("type")
        any_of: list[Any] = []
        if isinstance(type_, list):
            kinds = [t for t in type_ if t != "null"]
            nullable = len(kinds) < len(type_)
            if len(kinds) == 1:
                out["type"] = kinds[0]
            elif kinds:
                any_of = [{"type": t} for t in kinds]
        elif type_ == "null":
            nullable = True
        elif type_ is not None:
            out["type"] = type_
        if "const" in node:
            out["enum"] = [node["const"]]
        if "enum" in node:
            out["enum"] = node["enum"]
        if "enum" in out:
            values = out["enum"] if isinstance(out["enum"], list) else [out["enum"]]
            nullable = nullable or any(v is None for v in values)
            out["enum"] = [v if isinstance(v, str) else json.dumps(v) for v in values if v is not None]
        examples = node.get("examples")
        if "example" not in out and isinstance(examples, list) and examples:
            out["example"] = examples[0]
        if nullable:
            out["nullable"] = True
        properties = node.get("properties")
        if isinstance(properties, Mapping):
            out["properties"] = {
                str(name): self.schema(sub, f"{path}.properties.{name}", depth + 1, refs)
                for name, sub in properties.items()
            }
        items = node.get("items")
        if isinstance(items, list):
            raise self.fail(f"{path}.items", "tuple items (a list of schemas) cannot be expressed")
        if items is not None:
            out["items"] = self.schema(items, f"{path}.items", depth + 1, refs)
        for key in ("anyOf", "oneOf"):
            subs = node.get(key)
            if isinstance(subs, list):
                any_of += [self.schema(s, f"{path}.{key}[{i}]", depth + 1, refs) for i, s in enumerate(subs)]
        if any_of:
            out["anyOf"] = any_of
        return out

    def resolve(
        self, ref: object, path: str, refs: tuple[str, ...]
    ) -> tuple[Mapping[str, Any], tuple[str, ...]]:
        if not isinstance(ref, str):
            raise self.fail(f"{path}.$ref", "a reference must be a string")
        for prefix in ("#/$defs/", "#/definitions/"):
            if ref.startswith(prefix):
                name = ref[len(prefix) :]
                defs = self.root.get(prefix[2:-1])
                target = defs.get(name) if isinstance(defs, Mapping) else None
                if not isinstance(target, Mapping):
                    raise self.fail(f"{path}.$ref", f"{ref!r} names no definition in the schema")
                if ref in refs:
                    raise self.fail(f"{path}.$ref", f"{ref!r} is recursive, which Gemini cannot express")
                return target, (*refs, ref)
        raise self.fail(
            f"{path}.$ref", "only local references (#/$defs/..., #/definitions/...) can be inlined"
        )


def gemini_schema(schema: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``schema`` in Gemini's subset; ``what`` names it in errors (``parameters of tool 'x'``)."""
    return _Translator(schema, what).schema(schema, "$", 0, ())
