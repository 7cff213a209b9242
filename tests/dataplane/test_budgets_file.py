"""An air-gapped node's budgets file (``<data dir>/quota/budgets.json``) as hostile input: one
that cannot be read is set aside and the period recounted from the evidence, as documented
(``dataplane.quota.local``); never a traceback, a wait on a FIFO or a read without end."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from dataplane.quota.local import BUDGETS_FILE, LocalLedger
from tests.fuzz.mutations import within


def _load(directory: Path) -> LocalLedger:
    ledger = LocalLedger(lambda: None, directory)
    ledger.load()
    return ledger


async def test_a_budgets_file_nested_past_the_parsers_depth_is_set_aside_and_recounted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # json raises RecursionError, no ValueError, for deep nesting: the node's start was a traceback.
    path = tmp_path / BUDGETS_FILE
    path.write_bytes(b"[" * 100_000)
    with caplog.at_level(logging.ERROR, logger="signalbox.dataplane.quota"):
        await asyncio.to_thread(_load, tmp_path)
    assert any(
        f"{path} is not JSON; the unreadable file is kept as" in r.getMessage() for r in caplog.records
    )
    assert (tmp_path / (BUDGETS_FILE + ".corrupt")).read_bytes() == b"[" * 100_000
    assert path.read_bytes().startswith(b'{"format": 1')


@pytest.mark.parametrize("plant", ["fifo", "device"])
async def test_a_budgets_file_that_is_a_fifo_or_a_device_is_set_aside_and_recounted_at_once(
    tmp_path: Path, plant: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Read whole with a blocking open: a FIFO hung the start, /dev/zero filled the memory.
    path = tmp_path / BUDGETS_FILE
    if plant == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with caplog.at_level(logging.ERROR, logger="signalbox.dataplane.quota"):
        await asyncio.to_thread(within, 10, lambda: _load(tmp_path), path)
    assert any(
        f"{path} cannot be read: not a regular file; the unreadable file is kept as" in r.getMessage()
        for r in caplog.records
    )
    assert path.read_bytes().startswith(b'{"format": 1')
