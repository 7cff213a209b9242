"""What only the cyclic garbage collector would free: the node's objects in reference cycles.

A serving worker runs the cyclic collector seldom (``dataplane.collector``), so a cycle made
per request holds its memory long after the request. Tests run an exchange inside
``garbage()`` (the collector off) and then assert the node left nothing for it.
"""

from __future__ import annotations

import gc
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dataplane

DATAPLANE = str(Path(dataplane.__file__).parent)


def ours(obj: object) -> str | None:
    """What ``obj`` is, when it is the node's: an instance of its classes, or a coroutine,
    frame or bound method of its functions (named with the function); else None."""
    if isinstance(obj, types.MethodType):
        return ours(obj.__self__)
    code = None
    if isinstance(obj, types.CoroutineType):
        code = obj.cr_code
    elif isinstance(obj, types.GeneratorType):
        code = obj.gi_code
    elif isinstance(obj, types.AsyncGeneratorType):
        code = obj.ag_code
    elif isinstance(obj, types.FrameType):
        code = obj.f_code
    if code is not None:
        return f"{type(obj).__name__} {code.co_qualname}" if code.co_filename.startswith(DATAPLANE) else None
    return type(obj).__qualname__ if type(obj).__module__.startswith("dataplane.") else None


@dataclass
class Garbage:
    ours: list[str] = field(default_factory=list)
    """The node's objects that only the cyclic collector would have freed (``ours``)."""
    largest: int = 0
    """Bytes of the largest object among all the garbage, the node's or not."""


@contextmanager
def garbage() -> Iterator[Garbage]:
    """Collector off inside; on the way out, what only the cyclic collector would have freed."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    found = Garbage()
    try:
        yield found
    finally:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            found.ours = sorted({name for o in gc.garbage if (name := ours(o)) is not None})
            found.largest = max((sys.getsizeof(o) for o in gc.garbage), default=0)
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
            if was_enabled:
                gc.enable()
