"""The evidence files a node reads back at start, fuzzed: its segments, the checkpoints, the
base of a pruned prefix and the writer lock, garbled or replaced by special files.

Whatever is on disk, a real ``EvidenceLog.start`` either refuses with ``EvidenceChainBroken``
(or an ``OSError``) naming the file, in one bounded line, or recovers as documented (a torn
last line or checkpoint cut away, a power cut's segments set aside), and then the chain it
extends still verifies: a node never appends to, or signs a checkpoint over, a chain that
does not verify. It never hangs (a FIFO) and never reads without bound (a device)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.errors import EvidenceChainBroken
from dataplane.evidence import checkpoint, merkle, segments
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.records import read_records, verify_chain
from dataplane.evidence.shipper import prune
from dataplane.evidence.writer_lock import lock_path
from tests.fuzz.mutations import LOADING_LIMIT_S, SPECIAL_KINDS, examples, hostile, plant, refusal_ok, within

NODE = "n"
CHAIN = "n/0"


@dataclass(frozen=True)
class Chain:
    """A pruned, segmented, checkpointed chain, as a stopped node leaves it."""

    data_dir: Path
    key: ec.EllipticCurvePrivateKey

    @property
    def path(self) -> Path:
        return log_path(self.data_dir, NODE)

    def files(self) -> dict[str, Path]:
        live = segments.all_segments(self.path)
        return {
            "oldest segment": live[0].path,
            "middle segment": live[len(live) // 2].path,
            "newest segment": live[-1].path,
            "checkpoints": checkpoint.checkpoints_path(self.path),
            "base": segments.base_path(self.path),
        }


def _log(path: Path, key: ec.EllipticCurvePrivateKey) -> EvidenceLog:
    return EvidenceLog(
        path, NODE, signer=key, checkpoint_records=4, checkpoint_interval=60, segment_bytes=900
    )


async def _write_chain(data_dir: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path = log_path(data_dir, NODE)
    async with _log(path, key) as log:
        for n in range(24):
            log.append({"n": n, "tenant_id": "t-acme", "pad": "x" * 120})
            if n % 4 == 3:
                await log.checkpoint()
    live = segments.all_segments(path)
    prune(path, CHAIN, live[1].start)  # the first segment goes, behind a base


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    key = ec.generate_private_key(ec.SECP256R1())
    made = Chain(tmp_path_factory.mktemp("chain"), key)
    asyncio.run(_write_chain(made.data_dir, key))
    assert segments.read_base(made.path) is not None
    assert len(segments.all_segments(made.path)) >= 4
    return made


class _Copy:
    """A private copy of the chain's data dir, removed afterwards."""

    def __init__(self, chain: Chain) -> None:
        self._tmp = tempfile.mkdtemp(prefix="evidence-fuzz-")
        self.chain = Chain(Path(self._tmp) / "node", chain.key)
        shutil.copytree(chain.data_dir, self.chain.data_dir, symlinks=True)

    def __enter__(self) -> Chain:
        return self.chain

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def _start_then_extend(chain: Chain) -> BaseException | None:
    """Start a real log on ``chain``, append a record, stop (a last checkpoint is signed);
    the refusal when it would not start."""

    async def run() -> None:
        log = _log(chain.path, chain.key)
        await log.start()
        try:
            log.append({"n": "after", "tenant_id": "t-acme"})
        finally:
            await log.aclose()

    try:
        asyncio.run(run())
    except (EvidenceChainBroken, OSError) as exc:
        return exc
    return None


def _check(chain: Chain, target: Path, outcome: BaseException | None) -> None:
    if outcome is not None:
        # Named: the file, or the chain's file whose records or checkpoints it contradicts.
        refusal_ok(outcome, target, *chain.files().values(), chain.path)
        return
    # Started: the records it extended verify, and the checkpoint it signed last covers them
    # all with their root (checkpoints before it are the verifier's to check: the node reads
    # only the last one back at start).
    head = verify_chain(chain.path)
    notes = checkpoint.read_notes(checkpoint.checkpoints_path(chain.path))
    last = checkpoint.verify(notes[-1], chain.key.public_key())
    assert (last.chain_id, last.size) == (CHAIN, head.seq)
    base = segments.read_base(chain.path)
    tree = base.tree() if base is not None else merkle.Tree()
    for record in read_records(chain.path):
        tree.append(bytes.fromhex(record["hash"]))
    assert tree.root() == last.root


FILES = ("oldest segment", "middle segment", "newest segment", "checkpoints", "base")


def _original(chain: Chain, which: str) -> bytes:
    return chain.files()[which].read_bytes()


@settings(max_examples=examples(25))
@given(which=st.sampled_from(FILES), data=st.data())
def test_a_garbled_evidence_file_is_refused_by_name_or_recovered_and_the_chain_verifies(
    chain: Chain, which: str, data: st.DataObject
) -> None:
    valid = _original(chain, which)
    document = None
    if which == "base":
        document = segments.json_object(valid, "base")
    bad = data.draw(hostile(valid, document), label=which)
    with _Copy(chain) as copy:
        target = copy.files()[which]
        target.write_bytes(bad)
        outcome = within(LOADING_LIMIT_S, lambda: _start_then_extend(copy))
        _check(copy, target, outcome)


@settings(max_examples=examples(10))
@given(first=st.sampled_from(FILES), second=st.sampled_from(FILES))
def test_swapped_evidence_files_are_refused_by_name_or_recovered(
    chain: Chain, first: str, second: str
) -> None:
    with _Copy(chain) as copy:
        files = copy.files()
        a, b = files[first].read_bytes(), files[second].read_bytes()
        files[first].write_bytes(b)
        files[second].write_bytes(a)
        outcome = within(LOADING_LIMIT_S, lambda: _start_then_extend(copy))
        _check(copy, files[first], outcome)


LIMITS = {"checkpoints": 64 * 1024 * 1024, "base": segments.MAX_BASE_BYTES}


def _special_cases() -> Iterator[tuple[str, str]]:
    for which in (*FILES, "lock"):
        for kind in SPECIAL_KINDS:
            yield which, kind


@pytest.mark.parametrize(("which", "kind"), list(_special_cases()))
def test_a_special_file_in_place_of_an_evidence_file_is_refused_by_name_without_waiting(
    chain: Chain, which: str, kind: str
) -> None:
    with _Copy(chain) as copy:
        target = lock_path(copy.path) if which == "lock" else copy.files()[which]
        plant(target, kind, LIMITS.get(which, 1024 * 1024))
        outcome = within(LOADING_LIMIT_S, lambda: _start_then_extend(copy), target)
        _check(copy, target, outcome)
