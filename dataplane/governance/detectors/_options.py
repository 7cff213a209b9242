"""Strict reading of a rule's detector options: every error names the option it is about.

Options arrive from a profile's JSON or YAML, so they are hostile until checked: a wrong
type, an empty or oversized list, an unknown key are each refused with a
``DetectorConfigError`` whose field is ``options.<name>`` (``options.<name>[i]`` for one item
of a list), never with the option's value in the message (a term list may itself be
confidential).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dataplane.governance.detect import DetectorConfigError

MAX_KIND_CHARS = 64


class Options:
    """Takes options one by one; ``done`` refuses whatever was not taken."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        if not isinstance(options, Mapping):
            raise DetectorConfigError("options", "must be an object")
        self._options = options
        self._taken: set[str] = set()

    def _get(self, name: str) -> Any:
        self._taken.add(name)
        return self._options.get(name)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise DetectorConfigError(f"options.{name}", "must be true or false")
        return value

    def string(self, name: str, default: str, *, max_chars: int = MAX_KIND_CHARS) -> str:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise DetectorConfigError(f"options.{name}", "must be a non-empty string")
        if len(value) > max_chars:
            raise DetectorConfigError(f"options.{name}", f"must be at most {max_chars} characters")
        return value

    def kind(self, default: str) -> str:
        """The ``kind`` label findings carry: recorded in evidence, so a short plain token."""
        value = self.string("kind", default)
        if not all(c.isascii() and (c.isalnum() or c in "_.-:") for c in value):
            raise DetectorConfigError("options.kind", "may only hold ASCII letters, digits and _ . - :")
        return value

    def strings(
        self,
        name: str,
        *,
        default: list[str] | None = None,
        min_items: int = 1,
        max_items: int,
        max_chars: int,
        min_chars: int = 1,
    ) -> list[str]:
        value = self._get(name)
        if value is None:
            if default is None:
                raise DetectorConfigError(f"options.{name}", "is required")
            return list(default)
        if not isinstance(value, list):
            raise DetectorConfigError(f"options.{name}", "must be a list of strings")
        if not min_items <= len(value) <= max_items:
            raise DetectorConfigError(f"options.{name}", f"must hold {min_items} to {max_items} items")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise DetectorConfigError(f"options.{name}[{i}]", "must be a string")
            if not min_chars <= len(item) <= max_chars:
                raise DetectorConfigError(
                    f"options.{name}[{i}]", f"must be {min_chars} to {max_chars} characters"
                )
        return list(value)

    def choices(self, name: str, allowed: Mapping[str, Any], default: list[str]) -> list[str]:
        """A list of names from ``allowed`` (case as given there), without repeats."""
        chosen = self.strings(name, default=default, max_items=len(allowed), max_chars=64)
        known = sorted(allowed)
        # A message stays short: a long list is named by a few of its members.
        listed = ", ".join(known) if len(known) <= 20 else f"{', '.join(known[:5])}... ({len(known)} known)"
        for i, item in enumerate(chosen):
            if item not in allowed:
                raise DetectorConfigError(f"options.{name}[{i}]", f"unknown; one of {listed}")
        if len(set(chosen)) != len(chosen):
            raise DetectorConfigError(f"options.{name}", "must not repeat an item")
        return chosen

    def done(self) -> None:
        unknown = sorted(str(k) for k in self._options if k not in self._taken)
        if unknown:
            name = unknown[0][:64]
            raise DetectorConfigError(f"options.{name}", "unknown option")


def no_options(options: Mapping[str, Any]) -> None:
    """For detectors that take none: any option is an unknown one."""
    Options(options).done()
