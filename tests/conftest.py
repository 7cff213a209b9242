"""Fixtures shared by the whole suite live in ``tests/fixtures/``, one module per
component, each owned by the part of the tree it serves."""

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from tests import compiled

# A node runs one worker per core by default; the nodes the suite starts run one unless a
# test asks for more (tests/dataplane/test_workers.py checks the default without this).
os.environ.setdefault("SIGNALBOX_WORKERS", "1")

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.upstream",
    "tests.fixtures.keys",
]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to run against compiled modules older than their sources: the extension is
    what Python imports, so the suite would test code that is no longer there."""
    problems = compiled.stale()
    if problems:
        pytest.exit(
            "the compiled modules do not match their sources; run `make native` "
            "(or `make clean` for pure Python):\n  " + "\n  ".join(problems),
            returncode=4,
        )


FIRST = ("tests/packaging/",)
"""Run first: their shared wheel (a mypyc build, ~2 min of one core) then overlaps with
the rest of the run instead of ending it. Under xdist the first tests go to one worker
as one chunk, so the others never wait for the wheel's lock."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = [item for item in items if item.nodeid.startswith(FIRST)]
    if first:
        chosen = {id(item) for item in first}
        items[:] = first + [item for item in items if id(item) not in chosen]


@pytest.fixture(scope="session", autouse=True)
async def _no_task_outlives_the_session() -> AsyncIterator[None]:
    """Every worker's session ends with its event loop: pytest-asyncio then cancels the
    tasks still alive and waits for them without a bound, so one that does not end on
    cancellation held a CI run for pytest-timeout's 120 s, with a stack that only showed
    the loop waiting. Set up before the fixtures tests ask for (autouse), so torn down after them,
    this cancels what is left itself and names any task that outlives the cancellation."""
    yield
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in left:
        task.cancel()
    if not left:
        return
    _, stuck = await asyncio.wait(left, timeout=15)
    if stuck:
        described = []
        for task in stuck:
            frames = "".join(
                f"\n    {f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}"
                for f in task.get_stack(limit=8)
            )
            described.append(f"{task.get_name()}: {task.get_coro()!r}{frames}")
        pytest.fail(
            f"{len(stuck)} task(s) left by the tests did not end when cancelled:\n" + "\n".join(described),
            pytrace=False,
        )
