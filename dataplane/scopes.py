"""API key scopes: what a key may be used for, checked on every request.

Grammar (shared by the control plane, the admin CLI and the node)::

    scope  = KIND ":" VALUE
    KIND   = "model" | "op" | "task"
    VALUE  = 1..128 characters, no whitespace or control characters

- ``model:ALIAS`` -- a model alias the key may be routed to (explicitly or by policy);
- ``task:TASK``   -- a value of a request's ``task`` field the key may send;
- ``op:OP``       -- an operation: ``chat`` (unary Infer), ``stream`` (InferStream),
  ``embed`` (Embed).

The value is everything after the first ``:`` (so ``model:org:m`` names the alias
``org:m``); ``*`` is not special. A key without scopes is unrestricted. Several
scopes of one kind are alternatives (OR); kinds combine with AND; an absent kind
does not restrict. A ``model:`` scope may name a model that is not (yet) in the
registry: models can be added later, and such a scope simply matches nothing
until then. Exact duplicates are rejected where scopes are written (control
plane, CLI) and harmless where they are read.

A node parses each key's scopes once, when it compiles a snapshot
(``KeyScope.parse``). A scope it does not understand (a newer kind, a value that
breaks the grammar) does not fail the snapshot: it fails closed for that key
only -- every request with it is PERMISSION_DENIED, naming the scope.

This module is pure (no I/O, no clocks) and imports nothing from
``dataplane.api``, so the control plane may import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from dataplane.errors import ECHO_CHARS, PermissionDenied, shown


class _Model(Protocol):
    @property
    def alias(self) -> str: ...


class _Routed(Protocol):
    """What ``within_scope`` needs of a candidate (``dataplane.routing.Candidate`` has it)."""

    @property
    def model(self) -> _Model: ...


Candidate = TypeVar("Candidate", bound=_Routed)

MODEL: Final = "model"
TASK: Final = "task"
OP: Final = "op"
KINDS: Final = (MODEL, OP, TASK)
"""The scope kinds, sorted (as error messages list them)."""

CHAT: Final = "chat"
STREAM: Final = "stream"
EMBED: Final = "embed"
OPERATIONS: Final = (CHAT, EMBED, STREAM)
"""The values of ``op:`` scopes, sorted: unary Infer, Embed, InferStream."""

MAX_VALUE_CHARS: Final = 128
OUT_OF_SCOPE: Final = "outside the key's scope"
"""The reason recorded for a policy candidate dropped by the key's ``model:`` scopes."""


class ScopeSyntaxError(ValueError):
    """One entry of a list of scopes breaks the grammar; ``index`` says which."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(f"scopes[{index}]: {problem}")
        self.index = index
        self.problem = problem


def parse_scope(text: str) -> tuple[str, str]:
    """``(kind, value)`` of one scope, or ``ValueError`` with the rule it breaks."""
    kind, sep, value = text.partition(":")
    if not sep:
        raise ValueError(f"{shown(text)} is not KIND:VALUE (kinds: {', '.join(KINDS)})")
    if kind not in KINDS:
        raise ValueError(f"unknown scope kind {shown(kind)} (known: {', '.join(KINDS)})")
    if not value:
        raise ValueError(f"{kind}: value must not be empty")
    if len(value) > MAX_VALUE_CHARS:
        raise ValueError(f"{kind}: value is {len(value)} characters, more than {MAX_VALUE_CHARS}")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{kind}: value {shown(value)} contains whitespace or control characters")
    if kind == OP and value not in OPERATIONS:
        raise ValueError(f"op: unknown operation {shown(value)} (known: {', '.join(OPERATIONS)})")
    return kind, value


def validate_scopes(scopes: Sequence[str]) -> None:
    """Raise ``ScopeSyntaxError`` for the first entry that breaks the grammar or repeats one."""
    seen: dict[str, int] = {}
    for i, text in enumerate(scopes):
        try:
            parse_scope(text)
        except ValueError as exc:
            raise ScopeSyntaxError(i, str(exc)) from None
        if text in seen:
            raise ScopeSyntaxError(i, f"duplicate of scopes[{seen[text]}]")
        seen[text] = i


MAX_LISTED: Final = 8
"""At most this many scopes are listed in a message."""


def _clip(value: str) -> str:
    return value if len(value) <= ECHO_CHARS else value[:ECHO_CHARS] + "..."


def _allowed(kind: str, values: frozenset[str]) -> str:
    """``kind:value, ...`` for a message: bounded in count and in each value's length."""
    ordered = sorted(values)
    listed = ", ".join(f"{kind}:{_clip(v)}" for v in ordered[:MAX_LISTED])
    more = len(ordered) - MAX_LISTED
    return f"{listed}, and {more} more" if more > 0 else listed


@dataclass(frozen=True, slots=True)
class KeyScope:
    """A key's scopes, parsed. ``None`` for a kind means that kind does not restrict."""

    operations: frozenset[str] | None = None
    tasks: frozenset[str] | None = None
    models: frozenset[str] | None = None
    invalid: str = ""
    """Why the key is refused outright: a scope this node does not understand ("" if none)."""

    @classmethod
    def parse(cls, scopes: Iterable[str]) -> KeyScope:
        """The parsed form of ``scopes``; never raises (a bad scope makes ``invalid``)."""
        by_kind: dict[str, set[str]] = {}
        for text in sorted(scopes):
            try:
                kind, value = parse_scope(text)
            except ValueError as exc:
                return cls(invalid=f"key scope {shown(text)} is not understood by this node ({exc})")
            by_kind.setdefault(kind, set()).add(value)
        if not by_kind:
            return UNRESTRICTED

        def of(kind: str) -> frozenset[str] | None:
            values = by_kind.get(kind)
            return frozenset(values) if values is not None else None

        return cls(operations=of(OP), tasks=of(TASK), models=of(MODEL))

    @property
    def unrestricted(self) -> bool:
        return not self.invalid and self.operations is None and self.tasks is None and self.models is None

    def _refuse_if_invalid(self) -> None:
        if self.invalid:
            raise PermissionDenied(f"{self.invalid}; the key is refused")

    def check_operation(self, op: str) -> None:
        """PermissionDenied unless the key may use operation ``op`` (``chat``, ``stream``, ``embed``)."""
        self._refuse_if_invalid()
        if self.operations is not None and op not in self.operations:
            raise PermissionDenied(
                f"key scope does not allow operation {shown(op)} (allowed: {_allowed(OP, self.operations)})"
            )

    def check_task(self, task: str) -> None:
        """PermissionDenied unless the key may send a request with this ``task`` (may be empty)."""
        self._refuse_if_invalid()
        if self.tasks is not None and task not in self.tasks:
            what = f"task {shown(task)}" if task else "a request without a task"
            raise PermissionDenied(f"key scope does not allow {what} (allowed: {_allowed(TASK, self.tasks)})")

    def allows_model(self, alias: str) -> bool:
        return not self.invalid and (self.models is None or alias in self.models)

    def check_model(self, alias: str) -> None:
        """PermissionDenied unless the key may be served by model ``alias``."""
        self._refuse_if_invalid()
        if self.models is not None and alias not in self.models:
            raise PermissionDenied(
                f"key scope does not allow model {shown(alias)} (allowed: {_allowed(MODEL, self.models)})"
            )

    def check_request(self, op: str, task: str) -> None:
        """``check_operation`` then ``check_task``: what is checked right after authentication."""
        self.check_operation(op)
        self.check_task(task)

    def describe_models(self) -> str:
        """The ``model:`` scopes as a message lists them."""
        if self.invalid:
            return "none: the key's scopes are not understood"
        return _allowed(MODEL, self.models) if self.models is not None else "any model"


UNRESTRICTED: Final = KeyScope()
"""The scope of a key without scopes."""


def within_scope(
    scope: KeyScope, ordered: Sequence[Candidate]
) -> tuple[tuple[Candidate, ...], tuple[tuple[str, str], ...]]:
    """Split a plan's ordered candidates into those the key may use (order kept) and the
    drops: one ``(model alias, reason)`` per model outside the key's ``model:`` scopes.

    Pure; never raises. When nothing is kept, the caller refuses the request with
    ``nothing_in_scope`` (after recording the drops).
    """
    if scope.models is None and not scope.invalid:
        return tuple(ordered), ()
    kept: list[Candidate] = []
    dropped: dict[str, tuple[str, str]] = {}
    reason = f"{OUT_OF_SCOPE} ({scope.describe_models()})"
    for c in ordered:
        alias = c.model.alias
        if scope.allows_model(alias):
            kept.append(c)
        elif alias not in dropped:
            dropped[alias] = (alias, reason)
    return tuple(kept), tuple(dropped.values())


def nothing_in_scope(scope: KeyScope, dropped: Sequence[tuple[str, str]]) -> PermissionDenied:
    """The refusal when ``within_scope`` kept no candidate: names the scopes and the models refused."""
    if scope.invalid:
        return PermissionDenied(f"{scope.invalid}; the key is refused")
    refused = [alias for alias, _ in dropped]
    listed = ", ".join(shown(a) for a in refused[:MAX_LISTED])
    if len(refused) > MAX_LISTED:
        listed += f", and {len(refused) - MAX_LISTED} more"
    return PermissionDenied(
        f"key scope allows none of the models the policy chose ({listed}; allowed: {scope.describe_models()})"
    )
