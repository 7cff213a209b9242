"""Special files planted in a node's evidence directory: the start refuses them by name at
once, it never waits on a FIFO or reads a device without end."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import checkpoint, segments
from dataplane.evidence.log import EvidenceLog
from dataplane.evidence.writer_lock import lock_path
from tests.fuzz.mutations import within


async def _chain(tmp_path: Path) -> Path:
    path = tmp_path / "evidence" / "n@0.jsonl"
    async with EvidenceLog(path, "n") as log:
        log.append({"n": 1})
    return path


def _start(path: Path) -> None:
    async def run() -> None:
        log = EvidenceLog(path, "n")
        await log.start()
        await log.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("which", ["newest segment", "checkpoints", "base"])
async def test_a_fifo_in_place_of_an_evidence_file_is_refused_by_name_without_waiting(
    tmp_path: Path, which: str
) -> None:
    # Each was opened with a blocking open: the start waited for a reader or a writer forever.
    path = await _chain(tmp_path)
    target = {
        "newest segment": path,
        "checkpoints": checkpoint.checkpoints_path(path),
        "base": segments.base_path(path),
    }[which]
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    with pytest.raises(EvidenceChainBroken, match=f"^{re.escape(str(target))}: not a regular file$"):
        await asyncio.to_thread(within, 10, lambda: _start(path), target)


async def test_a_device_in_place_of_the_checkpoints_is_refused_instead_of_read_without_end(
    tmp_path: Path,
) -> None:
    path = await _chain(tmp_path)
    checkpoint.checkpoints_path(path).symlink_to("/dev/zero")
    with pytest.raises(EvidenceChainBroken, match=r"\.checkpoints: not a regular file$"):
        await asyncio.to_thread(within, 10, lambda: _start(path), checkpoint.checkpoints_path(path))


@pytest.mark.parametrize("plant", ["fifo", "device"])
async def test_a_writer_lock_that_is_not_a_regular_file_is_refused_naming_it(
    tmp_path: Path, plant: str
) -> None:
    # Its truncate failed with a bare "[Errno 22] Invalid argument": serve's one line named no file.
    path = await _chain(tmp_path)
    lock = lock_path(path)
    lock.unlink()
    if plant == "fifo":
        os.mkfifo(lock)
    else:
        lock.symlink_to("/dev/zero")
    with pytest.raises(OSError, match=re.escape(f"not a regular file: '{lock}'")):
        await asyncio.to_thread(within, 10, lambda: _start(path), lock)
