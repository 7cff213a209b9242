"""Policy documents and their compiled form.

A policy document is JSON (or YAML) per tenant, plus a platform default. Both
the control plane (at apply time) and the node (at snapshot apply) compile it
with ``compile_policy``, so what the control plane accepts is exactly what the
node can serve. Errors name the JSON path of the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dataplane.config.model import ModelConfig


class PolicyError(Exception):
    """The document is invalid at ``path`` (a JSON path such as ``$.rules[0].weights``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    policy_id: str
    tenant_id: str
    version: int
    default_model: str | None
    allowed_models: frozenset[str] | None
    """None: every model in the registry is allowed."""


_KNOWN_FIELDS = frozenset({"default_model", "allowed_models"})


def compile_policy(
    document: Mapping[str, Any],
    models: Mapping[str, ModelConfig],
    *,
    policy_id: str,
    tenant_id: str,
    version: int,
) -> CompiledPolicy:
    """Check ``document`` against the model registry and compile it."""
    if not isinstance(document, Mapping):
        raise PolicyError("$", "a policy document must be an object")
    for key in document:
        if key not in _KNOWN_FIELDS:
            raise PolicyError(f"$.{key}", "unknown field")
    allowed: frozenset[str] | None = None
    if "allowed_models" in document:
        raw = document["allowed_models"]
        if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
            raise PolicyError("$.allowed_models", "must be a list of model aliases")
        for i, alias in enumerate(raw):
            if alias not in models:
                raise PolicyError(f"$.allowed_models[{i}]", f"unknown model {alias!r}")
        allowed = frozenset(raw)
    default = document.get("default_model")
    if default is not None:
        if not isinstance(default, str):
            raise PolicyError("$.default_model", "must be a model alias")
        if default not in models:
            raise PolicyError("$.default_model", f"unknown model {default!r}")
        if allowed is not None and default not in allowed:
            raise PolicyError("$.default_model", f"{default!r} is not in allowed_models")
    return CompiledPolicy(policy_id, tenant_id, version, default, allowed)
