"""The detector protocol and its registry.

A detector finds where one kind of sensitive data sits in a text. It never
returns the matched text itself, only positions: whoever holds the text may
slice it (to mask or redact), and everything that is recorded (evidence, logs,
``governance test`` output) carries only detector names, kinds, counts and
positions.

Contract for every detector:

- ``find`` is pure and deterministic: the same text gives the same spans, with
  no I/O, no clock and no randomness, so cloud, on-prem and air-gapped nodes
  decide alike and a corpus test can pin precision and recall.
- Its cost is linear in the text's length (no backtracking regular
  expressions on tenant-supplied patterns), because texts are the caller's.
- Spans are returned sorted by ``start``, and do not overlap one another.
- Offsets index the ``str`` (code points), ``text[span.start:span.end]`` is
  the finding.

A profile rule names a detector and gives it options; ``build`` checks them
and returns a ready detector, or raises ``DetectorConfigError`` naming the
option, which the control plane reports when an admin applies a profile. A
detector is built once per snapshot, never per request.

New detectors (an ML-based one, say) register a factory under a new name; the
pipeline does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol


class Span:
    """One finding: ``text[start:end]`` is of ``kind``.

    ``kind`` refines the detector's name without revealing the value, such as
    ``"visa"`` for a payment card or ``"DE"`` for an IBAN's country; it is
    safe to record.

    A plain class with final attributes rather than a named tuple or a frozen dataclass:
    compiled (mypyc), making one is a C call of a few tens of nanoseconds where a named
    tuple's ``__new__`` is a Python function (~250 ns), and a request's detectors make one
    per finding, dozens per KB of a dense prompt. Immutable by its types (``Final``).
    """

    __slots__ = ("end", "kind", "start")

    def __init__(self, start: int, end: int, kind: str = "") -> None:
        self.start: Final = start
        self.end: Final = end
        self.kind: Final = kind

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Span):
            return NotImplemented
        return self.start == other.start and self.end == other.end and self.kind == other.kind

    def __hash__(self) -> int:
        return hash((self.start, self.end, self.kind))

    def __repr__(self) -> str:
        return f"Span({self.start}, {self.end}, {self.kind!r})"


class Detector(Protocol):
    """Finds one kind of sensitive data in a text."""

    @property
    def name(self) -> str:
        """The registry name this detector was built from (e.g. ``"iban"``)."""
        ...

    def find(self, text: str) -> list[Span]:
        """Every finding in ``text``, sorted by start and not overlapping."""
        ...


class DetectorConfigError(ValueError):
    """A rule's options for a detector are wrong; ``field`` names the option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


DetectorFactory = Callable[[Mapping[str, Any]], Detector]
"""Builds a detector from a rule's options (already parsed from the profile's JSON/YAML)."""

_REGISTRY: dict[str, DetectorFactory] = {}


def register(name: str, factory: DetectorFactory) -> None:
    """Make ``factory`` available to profiles as ``name``; a name is registered once."""
    if name in _REGISTRY:
        raise ValueError(f"detector {name!r} is registered already")
    _REGISTRY[name] = factory


def names() -> list[str]:
    """Every registered detector name, sorted."""
    return sorted(_REGISTRY)


def build(name: str, options: Mapping[str, Any] | None = None) -> Detector:
    """A detector ``name`` with ``options``; ``DetectorConfigError`` if either is wrong."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise DetectorConfigError(
            "detector", f"unknown detector {name!r}; known: {', '.join(names()) or 'none'}"
        )
    return factory(options or {})
