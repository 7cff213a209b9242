"""Shared test helpers: polling instead of sleeping, and the CLI as a process of its own."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Call ``probe`` until it returns a truthy value or stops raising AssertionError.

    Returns that value; fails the test with the last error after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = probe()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
            if result:
                return result  # type: ignore[return-value]
            last = None
        except AssertionError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} did not hold within {timeout}s") from last
        await asyncio.sleep(interval)


def wait_until(
    probe: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"
) -> T:
    """Synchronous ``eventually`` for threads and subprocesses."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
            last = None
        except AssertionError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} did not hold within {timeout}s") from last
        time.sleep(interval)


async def signalbox_exit(
    *args: str | bytes, timeout: float = 60.0, env: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """``signalbox *args`` in a process of its own (a command that wrongly waits, say on a
    FIFO, is killed after ``timeout`` seconds instead of hanging the test): its exit status
    and what it wrote to stderr. ``env``: variables set on top of this process's."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=None if env is None else {**os.environ, **env},
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, err.decode()


async def connect_from(source: str, address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to ``address`` (host:port) from the local address ``source`` (another
    address of this host: all of 127/8 is loopback on Linux)."""
    host, _, port = address.rpartition(":")
    return await asyncio.open_connection(host, int(port), local_addr=(source, 0))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """The other end closed the connection (EOF or a reset) within ``seconds``, sending nothing."""
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
