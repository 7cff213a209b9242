"""The policy language: documents, their published JSON Schema, parsing and validation.

A policy document is JSON (or YAML) per tenant, plus a platform default. The
control plane parses and validates a document at apply time (``parse_document``,
``validate_document``); both the control plane and the node then compile it with
``dataplane.policy.compiler.compile_policy``, so what the control plane accepts is
exactly what the node can serve. Errors name the JSON path of the problem.

The language, by example (every field optional but ``default_model`` or
``allowed_models``: a policy names the models it may use; the published JSON Schema is
``policy.schema.json`` next to this module)::

    default_model: sim-fast            # the default route, tried first
    allowed_models: [sim-fast, sim-smart, gpt-4o]   # nothing else, in any rule or by name;
                                       # absent: only default_model (one of the two is required)
    constraints:                       # apply to every rule (a rule may override)
      max_cost_usd: 0.05               # estimated from prompt tokens + max output
      max_latency_ms: 4000             # observed EWMA, else the model's typical latency
      regions: [eu-west-1]             # provider regions allowed
      jurisdictions: [EU]
      allow_egress: false              # may an on-prem node call a public cloud?
      certification_required_from: internal   # data classes needing a certified model
    retry: {max_attempts: 3, attempts_per_deployment: 2, backoff_base_ms: 100,
            backoff_cap_ms: 2000, fallback_on: [server_error, rate_limited, timeout],
            hedge: {after_ms: 300, max_extra: 1}}   # unary calls: race the next candidate
                                       # beside one silent for 300 ms; max_extra 0: off
    rules:                             # first match wins; none matched: the default route
      - name: canary
        match: {tiers: [gold], tasks: [summarize], metadata: {env: prod},
                capabilities: [tools], data_classification: [internal],
                regions: [eu-west-1], jurisdictions: [EU]}
        strategy: weighted             # priority | cheapest | latency | weighted
        weights: {gpt-4o: 90, sim-smart: 10}
        sticky_key: metadata.user_id   # one user sees one arm
        fallbacks: [sim-fast]
        shadow: {model: sim-smart, share: 0.05}
      - name: cheap-by-capability
        select: {capabilities: [chat], attributes: {family: [llama, mistral]}}
        strategy: cheapest

"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

from dataplane.config.model import Capability, DataClass, Strategy
from dataplane.errors import PolicyError

FALLBACK_KINDS = frozenset(
    {
        "server_error",
        "rate_limited",
        "timeout",
        "overloaded",
        "protocol_error",
        "context_too_long",
        "content_filtered",
        "quota_exhausted",
        "auth",
        "model_not_found",
    }
)
"""Error kinds (``ProviderError.kind``) a policy may name in ``fallback_on``."""


DATA_CLASS_NAMES: Mapping[str, DataClass] = {d.name.lower(): d for d in DataClass}

TOP_FIELDS = frozenset({"description", "default_model", "allowed_models", "constraints", "retry", "rules"})
RULE_FIELDS = frozenset(
    {
        "name",
        "description",
        "match",
        "models",
        "select",
        "strategy",
        "weights",
        "sticky_key",
        "fallbacks",
        "shadow",
        "constraints",
        "retry",
    }
)
MATCH_FIELDS = frozenset(
    {"tiers", "tasks", "metadata", "capabilities", "data_classification", "regions", "jurisdictions"}
)
SELECT_FIELDS = frozenset({"capabilities", "attributes"})
SHADOW_FIELDS = frozenset({"model", "share", "key"})
CONSTRAINT_FIELDS = frozenset(
    {
        "max_cost_usd",
        "max_latency_ms",
        "regions",
        "jurisdictions",
        "allow_egress",
        "certification_required_from",
    }
)
RETRY_FIELDS = frozenset(
    {"max_attempts", "attempts_per_deployment", "backoff_base_ms", "backoff_cap_ms", "fallback_on", "hedge"}
)
HEDGE_FIELDS = frozenset({"after_ms", "max_extra"})
HEDGE_AFTER_MS_MAX = 60_000
HEDGE_MAX_EXTRA_MAX = 3
CAPABILITY_NAMES: Mapping[str, Capability] = {c.value: c for c in Capability}
STRATEGY_NAMES: Mapping[str, Strategy] = {s.value: s for s in Strategy}
STICKY_PREFIXES = ("metadata.", "tenant.labels.")
STICKY_KEYS = frozenset({"tenant.id", "request_id"})


@cache
def schema() -> Mapping[str, Any]:
    """The published JSON Schema (Draft 2020-12) of a policy document."""
    text = resources.files("dataplane.policy").joinpath("policy.schema.json").read_text("utf-8")
    loaded: Mapping[str, Any] = json.loads(text)
    return loaded


def validate_document(document: Any) -> None:
    """Validate ``document`` against the published schema; raise ``PolicyError`` at the first problem.

    Run at apply time (it is thorough, not fast); then ``compile_policy``
    checks what a schema cannot: that models exist and weights make sense.
    """
    # No stubs for jsonschema; its use is confined to these lines.
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

    problem = schema_problem(_validator(Draft202012Validator), document)
    if problem is not None:
        raise PolicyError(*problem)


def schema_problem(validator: Any, document: Any) -> tuple[str, str] | None:
    """The first problem ``validator`` (a jsonschema validator) finds in ``document``, as
    (JSON path, message), both clipped; None when there is none.

    Shared by every document validated against a published schema (policies, governance
    profiles), so each names problems the same way: an unknown field and a missing one
    are named by the path of the field itself.
    """
    from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

    error = best_match(validator.iter_errors(document))
    if error is None:
        return None
    path = _json_path(error.absolute_path)
    message = error.message
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = set(error.schema.get("properties", {})) if isinstance(error.schema, Mapping) else set()
        extra = sorted(k for k in error.instance if k not in known)
        if extra:
            path, message = f"{path}.{extra[0]}", "unknown field"
    elif error.validator == "required" and isinstance(error.instance, Mapping):
        # Point at the missing field itself, as the compiler does.
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            path, message = f"{path}.{missing[0]}", "required"
    elif error.validator == "not" and isinstance(error.validator_value, Mapping):
        # Our schema uses ``not: {required: [x]}`` for "x is not allowed here".
        forbidden = error.validator_value.get("required", [])
        if forbidden:
            path, message = f"{path}.{forbidden[0]}", "not allowed here"
    return clip_message(path, 200), clip_message(message)


@cache
def _validator(cls: Any) -> Any:
    cls.check_schema(schema())
    return cls(schema())


def _json_path(parts: Iterable[object]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


MAX_DOCUMENT_BYTES = 1024 * 1024
"""A policy is a page or two; a megabyte is far beyond any real one."""
MAX_DEPTH = 64
"""Nesting of objects and lists; the deepest real policy nests about six levels."""
MAX_MESSAGE_CHARS = 300
"""Messages quote parts of the document (a YAML excerpt, a jsonschema instance): clipped."""


def clip_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...(clipped)"


def parse_document(text: str) -> Any:
    """Parse policy text (JSON, or YAML which is a superset) into a document.

    Hostile text is refused before it can cost much: more than ``MAX_DOCUMENT_BYTES``,
    YAML anchors and aliases (a few hundred bytes of aliases expand to gigabytes; a
    policy never needs them), nesting deeper than ``MAX_DEPTH``. Raises
    ``PolicyError`` at ``$`` naming the problem (and the line, for YAML).
    """
    if len(text) > MAX_DOCUMENT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise PolicyError("$", f"at most {MAX_DOCUMENT_BYTES} bytes")
    try:
        # JSON first: it is what tools send, and the C parser is fast.
        document = json.loads(text)
    except RecursionError:
        raise PolicyError("$", f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        # Not JSON (or a number JSON cannot hold): read it as YAML, which decides.
        return _parse_yaml(text)
    _check_depth(document)
    return document


def _check_depth(document: Any) -> None:
    """Without recursion: the document may be deeper than Python's stack."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Iterable[Any] = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise PolicyError("$", f"nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def _parse_yaml(text: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        """A SafeLoader that refuses anchors and aliases and bounds the nesting while it
        composes (the composer recurses once per level, so the bound comes first)."""

        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise PolicyError("$", f"YAML anchors and aliases are not allowed{_line(event)}")
            if isinstance(event, yaml.CollectionStartEvent):
                self.depth += 1
                if self.depth > MAX_DEPTH:
                    raise PolicyError("$", f"nested deeper than {MAX_DEPTH} levels{_line(event)}")
                try:
                    return super().compose_node(parent, index)
                finally:
                    self.depth -= 1
            return super().compose_node(parent, index)

    loader: Loader | None = None
    try:
        loader = Loader(text)  # reads the first characters already: may raise
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise PolicyError("$", clip_message(f"not valid YAML or JSON: {exc}")) from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # A scalar the constructor cannot build: a 5,000-digit integer, 2024-02-30.
        raise PolicyError("$", clip_message(f"not valid YAML or JSON: {exc}")) from None
    finally:
        if loader is not None:
            loader.dispose()


def _line(event: Any) -> str:
    mark = getattr(event, "start_mark", None)
    return f" (line {mark.line + 1})" if mark is not None else ""
