"""Settings: every one a CLI flag with a ``SIGNALBOX_*`` environment variable.

Each subcommand declares its settings through ``add``; the registry lets the
README list them all and a test check that none is missing there.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from signalbox.text import printable


@dataclass(frozen=True, slots=True)
class Setting:
    flag: str
    env: str
    help: str
    default: Any
    command: str


REGISTRY: dict[str, Setting] = {}


def add(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    env: str,
    help: str,
    default: Any = None,
    type: Any = str,
    command: str,
    action: str | None = None,
) -> None:
    """Add ``flag`` to ``parser``; its default comes from ``env`` when set."""
    if not env.startswith("SIGNALBOX_"):
        raise ValueError(f"{env}: settings' environment variables start with SIGNALBOX_")
    REGISTRY[f"{command} {flag}"] = Setting(flag, env, help, default, command)
    raw = os.environ.get(env)
    full_help = f"{help} [env {env}]"
    if action == "store_true":
        value = default if raw is None else raw.strip().lower() in {"1", "true", "yes", "on"}
        parser.add_argument(flag, action="store_true", default=value, help=full_help)
        return
    parser.add_argument(
        flag, default=default if raw is None else raw, type=_from_env(type, env, raw), help=full_help
    )


def count_problem(counts: tuple[tuple[str, int | None, int], ...]) -> str | None:
    """The first of ``counts`` (flag, value or None when unset, least allowed: 1 or 0) under
    its least, as its error message; None: all hold."""
    for flag, count, least in counts:
        if count is not None and count < least:
            return f"{flag}: {count} is not {'a positive count' if least else 'a count (0 or more)'}"
    return None


def _from_env(convert: Any, env: str, raw: str | None) -> Any:
    """``convert`` for a flag whose default may be ``env``'s raw text: argparse converts a
    string default only when the command that has the flag runs and the flag is not given, so
    a bad value of one command's variable neither breaks every other command (a traceback
    while the parsers were built) nor goes unnamed: the error names the variable."""
    if raw is None or convert is str:
        return convert

    def checked(text: str) -> Any:
        try:
            return convert(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            if text is not raw:
                raise
            if isinstance(exc, argparse.ArgumentTypeError):
                # The type's own words, which never echo a secret (a token's type says what
                # is wrong with it, not what it is).
                raise argparse.ArgumentTypeError(f"{env}: {exc}") from None
            raise argparse.ArgumentTypeError(f"{env}={printable(raw, 40)} is not valid") from None

    checked.__name__ = getattr(convert, "__name__", "value")
    return checked


def add_log_level(parser: argparse.ArgumentParser, *, command: str) -> None:
    """The ``--log-level`` and ``--log-format`` settings every long-running command shares."""
    add(
        parser,
        "--log-level",
        env="SIGNALBOX_LOG_LEVEL",
        default="INFO",
        help="DEBUG, INFO, WARNING or ERROR",
        command=command,
    )
    add(
        parser,
        "--log-format",
        env="SIGNALBOX_LOG_FORMAT",
        default="auto",
        help="json (one object per line, with correlation id, tenant and node), text, or auto "
        "(json unless stderr is a terminal)",
        command=command,
    )


LOG_FORMATS = ("auto", "json", "text")


def configure_logging(level_name: str, log_format: str = "text", **process: object) -> int:
    """Set up the process's log format and level (unknown names mean INFO); return the level.
    ``process``: fields every JSON line carries (service, node, worker)."""
    import logging

    from signalbox import logs

    level = getattr(logging, str(level_name).upper(), logging.INFO)
    if not isinstance(level, int):
        level = logging.INFO
    logs.configure(level, log_format if log_format in LOG_FORMATS else "auto", **process)
    return level


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: str) -> float:
    """Seconds of ``30d``, ``1h``, ``15m``, ``5s`` or a plain number of seconds; ``ValueError``
    (naming the accepted forms) for anything else, zero, negatives and non-finite values."""
    import math

    text = str(raw).strip().lower()
    unit = _UNITS.get(text[-1:], 0) if text else 0
    number = text[:-1] if unit else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{raw!r} is not a positive duration such as 30d, 12h, 15m, 90s or 90")
    return seconds


MAX_PORT = 65535


def address(text: str) -> str:
    """A ``HOST:PORT`` flag's value, refused when its port is a number no TCP port has: gRPC
    takes such a port modulo 65536, so ``--listen 127.0.0.1:99999`` listened on, and
    ``--target 127.0.0.1:99999`` called, port 34463."""
    port = text.rpartition(":")[2]
    if port.isascii() and port.isdecimal() and (len(port) > 5 or int(port) > MAX_PORT):
        raise argparse.ArgumentTypeError(
            f"{printable(text, 80)}: port {printable(port, 20)} is not 0-{MAX_PORT}"
        )
    return text


def seconds(text: str) -> float:
    """A deadline in seconds: a finite number above zero. A negative, NaN or infinite one is
    already past: gRPC failed such a call with DEADLINE_EXCEEDED before anything was sent (a
    typo looked like a slow server), and ``up`` started its processes only to stop them at
    once."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 10**9):
        raise argparse.ArgumentTypeError(
            f"{printable(text, 40)} is not a number of seconds above 0 and up to 10**9"
        )
    return value


def credential(text: str) -> str:
    """A token or API key sent as a gRPC header: printable ASCII. Anything else was gRPC's
    "Invalid metadata" (INTERNAL) or a traceback. The error never shows the value."""
    if not (text.isascii() and text.isprintable()):
        raise argparse.ArgumentTypeError(
            "must be printable ASCII (accents, lookalike letters and control characters are not)"
        )
    return text


def not_utf8(ns: argparse.Namespace) -> str | None:
    """The name of the first flag or argument of ``ns`` whose text is not UTF-8 (``--max-tokens``
    is ``max-tokens``): Python keeps such bytes of the command line as lone surrogates, which
    no protobuf string can hold."""
    for dest, value in vars(ns).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and _has_surrogate(v) for v in values):
            return dest.rstrip("_").replace("_", "-")
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


MAX_NODE_ID_CHARS = 256


def node_id(text: str) -> str:
    """A node's id: 1..256 characters, none a control character, as the control plane takes
    it (enrollment, sync, evidence import). An empty one (``--node-id "$UNSET"``) or one
    with a newline ran, and signed evidence under an id no control plane would import."""
    if not text or len(text) > MAX_NODE_ID_CHARS or printable(text, MAX_NODE_ID_CHARS) != text:
        raise argparse.ArgumentTypeError(
            f"'{printable(text, 80)}' is not 1..{MAX_NODE_ID_CHARS} characters without control characters"
        )
    return text


def directory(text: str) -> str:
    """A directory a command keeps its files in: created when missing, so only a path that
    is already something else (a file, a device) is refused here, by name, instead of the
    ``[Errno 17] File exists`` that creating under it would print without naming the flag."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{printable(text, 200)} exists and is not a directory")
    return text


def existing_directory(text: str) -> str:
    """A directory that must be there already (one the command reads from, never creates):
    a typo or a file given for it is refused by name at start, not found out later."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    if not os.path.isdir(text):
        what = "is not a directory" if os.path.exists(text) else "does not exist"
        raise argparse.ArgumentTypeError(f"{printable(text, 200)} {what}")
    return text
