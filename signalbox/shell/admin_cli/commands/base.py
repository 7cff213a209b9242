"""What every ``signalbox admin`` command module shares: the stub and action types and the
parsing of KEY=VALUE pairs and enum names from the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from signalbox.shell.admin_cli.output import Output

# The AdminService stub with token and deadline bound (``run._with_call_options``); grpc-stubs
# types stubs as synchronous, which grpc.aio ones are not.
Stub = Any
Action = Callable[[Stub, argparse.Namespace], Coroutine[Any, Any, Output]]


def pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag}: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def enum_value(enum: Any, prefix: str, name: str, flag: str) -> Any:  # the enum's ValueType
    try:
        return int(enum.Value(prefix + name.upper().replace("-", "_")))
    except ValueError:
        names: list[str] = list(enum.keys())
        known = ", ".join(n.removeprefix(prefix).lower() for n in names if not n.endswith("UNSPECIFIED"))
        raise SystemExit(f"{flag}: unknown value {name!r} (known: {known})") from None


def bounded_int(what: str, low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (no upper bound: None);
    the error says which ``what`` was expected and the range."""
    span = f"{low} or more" if high is None else f"{low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not {what}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"got {value}, expected {span} ({what})")
        return value

    return parse


def read_input(source: str, flag: str, limit: int) -> bytes:
    """A file's bytes, or stdin's for ``-``, at most ``limit`` of them: read in one bounded
    read, so ``/dev/zero`` or a wrong multi-gigabyte file is one line naming the flag rather
    than a MemoryError after every byte was read. Blocking: call it in a thread."""
    try:
        if source == "-":
            raw = sys.stdin.buffer.read(limit + 1)
        else:
            with Path(source).open("rb") as f:
                raw = f.read(limit + 1)
    except OSError as exc:
        raise SystemExit(f"{flag}: cannot read {source}: {exc.strerror or exc}") from None
    if len(raw) > limit:
        raise SystemExit(f"{flag}: {source}: more than {limit} bytes")
    return raw


def read_text_input(source: str, flag: str, limit: int) -> str:
    """``read_input`` as UTF-8 text; other bytes are one line naming the flag."""
    raw = read_input(source, flag, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SystemExit(f"{flag}: {source}: not UTF-8 text (byte {exc.start})") from None


UINT32_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1
# What the request's protobuf field holds: a value past it was a ValueError traceback while
# the request was built. Narrower database ranges are controlplane.limits' to name.
count = bounded_int("a whole number", 0, UINT32_MAX)
"""A uint32 setting (timeouts, token counts, weights; 0: unset) on the command line."""
stored_version = bounded_int("a stored version", 1, INT64_MAX)
"""A policy's or governance profile's version on the command line."""
nanos = bounded_int("a price in nano-USD", 0, INT64_MAX)
"""A price on the command line."""
