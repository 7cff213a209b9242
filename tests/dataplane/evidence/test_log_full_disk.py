"""The evidence log on a disk that fills up mid-record: a record the OS took only in part is
cut back and refused, never left as a torn line in the middle of the chain."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from dataplane.evidence.records import read_records, verify_chain

# The file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) is a disk filling up for this
# process alone: a write that crosses it is taken in part, the next one fails with EFBIG.
_CHILD = textwrap.dedent(
    """
    import asyncio, resource, signal, sys
    from pathlib import Path
    from dataplane.evidence.log import EvidenceLog

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    path = Path(sys.argv[1])

    async def main() -> None:
        log = EvidenceLog(path, "n")
        await log.start()
        log.append({"x": 1})
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 100, hard))
        try:
            log.append({"x": "y" * 500})
        except OSError as exc:
            print("refused", exc.errno)
        else:
            print("taken")
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        log.append({"x": 3})
        await log.aclose()

    asyncio.run(main())
    """
)


def test_a_record_the_disk_takes_only_in_part_is_cut_back_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused"), done.stdout
    # The chain holds the two records that were written, whole and linked.
    assert verify_chain(path).seq == 2
    assert [r["x"] for r in read_records(path)] == [1, 3]
