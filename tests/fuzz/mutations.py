"""Hostile versions of a node's valid files, for the file fuzz campaign: hypothesis
strategies that garble bytes (truncation, bit flips, insertion, deletion, size blow-ups) or
a JSON document's shape and types, and the special files planted where a file should be
(a FIFO, a directory, a device, a dangling link, an oversized sparse file).

``within`` runs a loader in a thread of its own with a time limit, so a loader that waits
on a FIFO fails the test, naming the file, instead of hanging it."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st

T = TypeVar("T")

NIGHTLY = settings.default.max_examples > 600


LOADING_LIMIT_S = 60.0
"""How long ``within`` lets a loader run before calling it hung. A hang detector, not a timing
check: a loader that waits on a FIFO never returns, and one that is merely slow (a CI machine
running three test workers, PostgreSQL and nodes at once) must not fail."""


def examples(ci: int) -> int:
    """Examples of one property: ``ci`` under the ``ci`` profile, 50 times more otherwise."""
    return ci if not NIGHTLY else ci * 50


MAX_BLOWUP = 2 * 1024 * 1024
"""The most a mutation grows a file to (larger than any limit is a sparse file, ``plant``)."""
_INTERESTING = (0x00, 0xFF, 0x7F, 0x80, 0x0A, 0x22, 0x7B, 0x7D, 0x5B, 0x2D, 0x30, 0x39)


@st.composite
def garbled(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` after one to four byte-level mutations."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        op = draw(st.sampled_from(("truncate", "flip", "insert", "delete", "repeat", "byte", "replace")))
        if op == "truncate":
            del data[draw(st.integers(0, n)) :]
        elif op == "flip" and n:
            data[draw(st.integers(0, n - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete" and n:
            at = draw(st.integers(0, n - 1))
            del data[at : at + draw(st.integers(1, max(1, n - at)))]
        elif op == "repeat" and n:
            at = draw(st.integers(0, n - 1))
            piece = bytes(data[at : at + draw(st.integers(1, 64))])
            times = draw(st.integers(2, max(2, MAX_BLOWUP // len(piece))))
            data[at:at] = piece * min(times, max(1, (MAX_BLOWUP - n) // len(piece)))
        elif op == "byte" and n:
            data[draw(st.integers(0, n - 1))] = draw(st.sampled_from(_INTERESTING))
        elif op == "replace":
            data = bytearray(draw(st.binary(max_size=64)))
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def reshaped(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    """``valid`` (a JSON object) with one member's value of another type, a member dropped or
    added, or the whole document replaced by another JSON value; serialized."""
    doc: Any = json.loads(json.dumps(valid))
    op = draw(st.sampled_from(("retype", "drop", "add", "whole", "nested")))
    keys = sorted(doc)
    if op == "retype":
        doc[draw(st.sampled_from(keys))] = draw(JSON_VALUES)
    elif op == "drop":
        del doc[draw(st.sampled_from(keys))]
    elif op == "add":
        doc[draw(st.text(max_size=8))] = draw(JSON_VALUES)
    elif op == "whole":
        doc = draw(JSON_VALUES)
    else:
        key = draw(st.sampled_from(keys))
        value = doc[key]
        if isinstance(value, list) and value:
            value[draw(st.integers(0, len(value) - 1))] = draw(JSON_VALUES)
        else:
            doc[key] = [value, draw(JSON_VALUES)]
    return json.dumps(doc, allow_nan=True).encode()


def hostile(valid: bytes, document: dict[str, Any] | None = None) -> st.SearchStrategy[bytes]:
    """Garbled bytes of ``valid``, or (for a JSON file) its ``document`` reshaped."""
    if document is None:
        return garbled(valid)
    return st.one_of(garbled(valid), reshaped(document))


SPECIAL_KINDS = ("fifo", "directory", "device", "dangling-link", "oversized", "nested-json")


def plant(path: Path, kind: str, limit: int) -> None:
    """Put a special file of ``kind`` where ``path`` is (removing what is there):
    ``oversized``: a sparse regular file one byte over ``limit``; ``nested-json``: ``[``
    repeated past any parser's depth, within ``limit``."""
    if path.is_dir() and not path.is_symlink():
        os.rmdir(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        path.mkdir(mode=0o700)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "dangling-link":
        path.symlink_to(path.with_name("nowhere"))
    elif kind == "oversized":
        with open(path, "wb") as f:
            f.truncate(limit + 1)
    elif kind == "nested-json":
        path.write_bytes(b"[" * min(limit, 200_000))
    else:
        raise AssertionError(kind)


def within(seconds: float, fn: Callable[[], T], *unblock: Path) -> T:
    """``fn()`` in a thread; fails the test when it has not returned after ``seconds`` (the
    FIFOs ``unblock`` are then opened both ways, so the thread can end)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed to the caller as it is
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="fuzz-loader", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in unblock:
            for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK):
                with contextlib.suppress(OSError):
                    os.close(os.open(fifo, flags))
        thread.join(seconds)
        raise AssertionError(f"loading hung for more than {seconds}s on {', '.join(map(str, unblock))}")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def refusal_ok(exc: BaseException, *paths: Path, limit: int = 2000) -> None:
    """A refusal that names one of ``paths`` (the file, or the one it contradicts), is
    bounded, and is one line."""
    text = str(exc)
    assert any(str(p) in text or p.name in text for p in paths), (
        f"{type(exc).__name__} names none of {', '.join(map(str, paths))}: {text!r}"
    )
    assert len(text) <= limit, f"a refusal of {len(text)} characters"
    assert "\n" not in text, f"a refusal of several lines: {text!r}"
    assert "Traceback" not in text
