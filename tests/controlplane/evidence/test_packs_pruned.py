"""Evidence Packs over chains whose oldest records retention pruned: real nodes (enrolled,
their chains written and signed by ``EvidenceLog`` with the certified node key) ship to a
real control plane on real PostgreSQL, a month is pruned behind signed statements, and the
packs exported across the boundary verify offline with the control plane's public key alone,
stating exactly which records were pruned and when; each tampering with the statements is
refused and named."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dataplane.evidence import checkpoint
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.pack import PackInvalid, canonical, seal_line, sign_ed25519
from dataplane.evidence.pack_verify import verify
from dataplane.identity import IdentityFiles
from signalbox.tls import aio_channel
from tests.controlplane.evidence.conftest import Stream, new_dir, received_long_ago
from tests.controlplane.evidence.test_packs import _export, _seqs, _trusted
from tests.controlplane.test_cli import _signalbox
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane

JAN = datetime(2025, 1, 15, tzinfo=UTC).timestamp()
PRUNE_BEFORE = datetime(2025, 2, 1, tzinfo=UTC)


async def _ship(
    plane: RunningControlPlane, private_tmp: Path, node: str, times: list[float], checkpoints: set[int]
) -> None:
    """Enroll ``node`` and ship its records at ``times`` (odd seqs tenant acme, even globex),
    a checkpoint signed after each seq in ``checkpoints``."""
    directory = new_dir(private_tmp, f"{node}-")
    tls = await plane.enroll(node, directory)
    path = log_path(directory, node)
    key = IdentityFiles(directory).private_key()
    async with EvidenceLog(path, node, signer=key, checkpoint_records=10**9, checkpoint_interval=3600) as log:
        for seq, ts in enumerate(times, start=1):
            tenant = "acme" if seq % 2 else "globex"
            log.append({"ts": ts, "correlation_id": f"corr-{node}-{seq}", "tenant_id": tenant})
            if seq in checkpoints:
                assert await log.checkpoint()
    notes = [n.decode() for n in checkpoint.read_notes(checkpoint.checkpoints_path(path))]
    async with aio_channel(plane.node_address, tls) as channel:
        stream = Stream(channel)
        ack = await stream.ship(f"{node}/0", path.read_bytes().splitlines(keepends=True), notes)
        stream.close()
    assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (len(times), len(notes), False), ack


@pytest.fixture
async def plane(database_url: str, private_tmp: Path) -> AsyncIterator[RunningControlPlane]:
    """node-a: seqs 1..6 in January 2025, 7..12 now, checkpoints at 6 and 12; node-b: seqs
    1..3 in January, checkpoint at 3. January is pruned: node-a keeps 7..12, node-b nothing."""
    async with running_control_plane(cp_settings(database_url, private_tmp)) as running:
        now = datetime.now(UTC).timestamp()
        await _ship(running, private_tmp, "node-a", [JAN] * 6 + [now] * 6, {6, 12})
        await _ship(running, private_tmp, "node-b", [JAN] * 3, {3})
        assert running.cp.retention is not None
        received_long_ago(running.database_url)
        result = await running.cp.retention.prune(PRUNE_BEFORE)
        assert [(s.chain_id, s.first_seq, s.last_seq) for s in result.statements] == [
            ("node-a/0", 1, 6),
            ("node-b/0", 1, 3),
        ]
        yield running


async def test_a_pack_across_the_pruned_boundary_verifies_and_states_what_was_pruned(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    out = private_tmp / "acme.pack"
    code, stdout, err = await _signalbox(
        "admin", "--target", plane.address, "--token", plane.token,
        "evidence", "export", "--tenant", "acme", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert f"wrote {out}: 3 records" in stdout
    # acme's January records (1, 3, 5) are pruned: the statement says so, they are not there.
    assert _seqs(out) == {"node-a/0": [7, 9, 11]}
    assert out.read_bytes().startswith(
        b'{"format":"signalbox-evidence-pack","version":2,"kind":"control-plane"}\n'
    )

    code, stdout, err = await _signalbox(
        "evidence", "verify", str(out), "--trust-key", str(plane.trust_key_path)
    )
    assert code == 0, stdout + err
    assert stdout.startswith(f"OK {out}: 3 records in 1 chains, signed by {plane.key_id}")
    pruned_at = "records 1..{} pruned by retention: {}..{} on 20"
    assert "chain node-a/0: " + pruned_at.format(6, 1, 6) in stdout, stdout
    assert (
        "(older than 2025-02-01T00:00:00Z), signed by the control plane; "
        "every stored record with seq 7..12 searched, 3 matched"
    ) in stdout
    assert "chain node-b/0: " + pruned_at.format(3, 1, 3) in stdout
    assert "nothing after them is covered by a checkpoint, nothing searched" in stdout, stdout

    report = verify(out, _trusted(plane))
    assert {c: [(s.first_seq, s.last_seq) for s in ss] for c, ss in report.pruned.items()} == {
        "node-a/0": [(1, 6)],
        "node-b/0": [(1, 3)],
    }
    assert [(c.chain_id, c.from_seq, c.to_seq, c.records) for c in report.chains] == [("node-a/0", 7, 12, 3)]
    assert [(u.chain_id, u.from_seq, u.to_seq) for u in report.unmatched] == [("node-b/0", 4, 3)]

    code, stdout, err = await _signalbox("evidence", "show", str(out))
    assert code == 0, err
    assert "chain node-a/0: " + pruned_at.format(6, 1, 6) in stdout
    assert "#7  correlation corr-node-a-7" in stdout
    code, stdout, err = await _signalbox("evidence", "show", str(out), "--json")
    assert code == 0, err
    document = json.loads(stdout)
    assert [(p["first_seq"], p["last_seq"], p["pruned_before"]) for p in document["pruned"]["node-a/0"]] == [
        (1, 6, "2025-02-01T00:00:00Z")
    ]
    assert document["revoked"] == []


async def test_export_by_correlation_id_on_either_side_of_the_boundary(
    plane: RunningControlPlane, private_tmp: Path
) -> None:
    after = private_tmp / "after.pack"
    assert await _export(plane, after, correlation_id="corr-node-a-8") == 1
    report = verify(after, _trusted(plane))
    assert [(c.chain_id, c.from_seq, c.to_seq, c.records) for c in report.chains] == [("node-a/0", 7, 12, 1)]
    assert _seqs(after) == {"node-a/0": [8]}

    # A record that was pruned: nothing to export, and the signed statement says why.
    before = private_tmp / "before.pack"
    assert await _export(plane, before, correlation_id="corr-node-a-2") == 0
    report = verify(before, _trusted(plane))
    assert report.chains == []
    assert {u.chain_id: (u.from_seq, u.to_seq) for u in report.unmatched} == {
        "node-a/0": (7, 12),
        "node-b/0": (4, 3),
    }
    assert report.pruned["node-a/0"][0].pruned_before == PRUNE_BEFORE


# ---- tampering with the statements: each is refused and named ----


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _json_line(value: dict[str, Any]) -> bytes:
    return canonical(value) + b"\n"


@pytest.fixture
async def acme(plane: RunningControlPlane, private_tmp: Path) -> Path:
    path = private_tmp / "acme.pack"
    await _export(plane, path, tenant_id="acme")
    verify(path, _trusted(plane))
    return path


def _searched_from(lines: list[bytes], at: int, seq: int) -> list[bytes]:
    """``lines`` with the chain section at ``at`` saying its searched range starts at ``seq``."""
    chain = json.loads(lines[at])
    chain["searched"]["from_seq"] = seq
    return [*lines[:at], _json_line(chain), *lines[at + 1 :]]


def _refused(plane: RunningControlPlane, lines: list[bytes], path: Path, pattern: str) -> None:
    path.write_bytes(b"".join(lines))
    with pytest.raises(PackInvalid, match=pattern):
        verify(path, _trusted(plane))


async def test_a_statement_edited_removed_moved_or_not_matching_from_seq_is_named(
    plane: RunningControlPlane, acme: Path
) -> None:
    lines = _lines(acme)
    assert json.loads(lines[2])["section"] == "pruned"
    section = json.loads(lines[2])
    chain_at = next(i for i, line in enumerate(lines) if b'"section":"chain"' in line)

    # Edited: records 1..5 said pruned instead of 1..6 (a forger re-encodes the payload).
    envelope = json.loads(section["statements"]["node-a/0"][0])
    body = json.loads(base64.b64decode(envelope["payload"]))
    body["last_seq"] = 5
    envelope["payload"] = base64.b64encode(canonical(body)).decode()
    edited = {**section, "statements": {**section["statements"], "node-a/0": [json.dumps(envelope)]}}
    _refused(
        plane,
        [*lines[:2], _json_line(edited), *lines[3:]],
        acme.with_name("edited.pack"),
        r"line 3: chain node-a/0: pruned-range statement 1 does not verify: no signature by a trusted key verifies",
    )

    # Removed: the chain's searched range starts at 7 with nothing saying why.
    _refused(
        plane,
        [*lines[:2], *lines[3:]],
        acme.with_name("removed.pack"),
        rf"line {chain_at}: chain node-a/0: the searched range starts at seq 7, but the pack holds no "
        r"pruned-range statement for the records before it",
    )

    # From another chain: node-b's statement listed under node-a.
    moved = {
        **section,
        "statements": {**section["statements"], "node-a/0": section["statements"]["node-b/0"]},
    }
    _refused(
        plane,
        [*lines[:2], _json_line(moved), *lines[3:]],
        acme.with_name("moved.pack"),
        r"line 3: chain node-a/0: pruned-range statement 1 is of chain 'node-b/0'",
    )

    # The chain's searched range shifted off the statement's end.
    _refused(
        plane,
        _searched_from(lines, chain_at, 8),
        acme.with_name("shifted.pack"),
        rf"line {chain_at + 1}: chain node-a/0: the searched range 8..12 does not start one after the "
        r"pruned range 1..6 of its pruned-range statement",
    )

    # Sealed by the control plane's own key (a buggy exporter, not a forger): the range of a
    # chain searched without a match must still start after its pruned range, and a
    # statement must be of a chain the pack lists.
    assert plane.cp.signer is not None
    key = plane.cp.signer.private_key
    seal = json.loads(lines[-1])
    manifest = seal["manifest"]
    shifted = [{**u, "from_seq": 1} for u in manifest["searched_without_match"]]
    resealed = {**manifest, "searched_without_match": shifted}
    _refused(
        plane,
        [*lines[:-1], seal_line(resealed, [sign_ed25519(key, resealed)])],
        acme.with_name("unmatched.pack"),
        rf"line {len(lines)}: the manifest: chain node-b/0: the searched range 1..3 does not start one "
        r"after the pruned range 1..3",
    )
    dropped = {**manifest, "searched_without_match": []}
    _refused(
        plane,
        [*lines[:-1], seal_line(dropped, [sign_ed25519(key, dropped)])],
        acme.with_name("unlisted.pack"),
        rf"line {len(lines)}: the manifest: a pruned-range statement of chain node-b/0, which it does not list",
    )


async def test_a_chain_whose_clock_stepped_back_verifies_after_each_prune_and_a_gap_is_named(
    database_url: str, private_tmp: Path
) -> None:
    """node-c's seqs 1-2 are dated February, 3-4 January (its clock stepped back), 5-6 now.
    A January prune stated 1..4 dropped while 1-2 stayed in February, and the pack searched
    the chain from 5: seq 1, acme's and stored, was left out of acme's pack although the
    pack says nothing was. January now waits for February: each pack holds every stored
    record of acme's, verifies, and a record taken out of it is still named."""
    feb = datetime(2025, 2, 15, tzinfo=UTC).timestamp()
    async with running_control_plane(cp_settings(database_url, private_tmp)) as plane:
        now = datetime.now(UTC).timestamp()
        await _ship(plane, private_tmp, "node-c", [feb, feb, JAN, JAN, now, now], {6})
        received_long_ago(plane.database_url)
        assert plane.cp.retention is not None
        assert (await plane.cp.retention.prune(PRUNE_BEFORE)).partitions == []
        out = private_tmp / "january.pack"
        assert await _export(plane, out, tenant_id="acme") == 3
        assert _seqs(out) == {"node-c/0": [1, 3, 5]}
        assert verify(out, _trusted(plane)).pruned == {}

        result = await plane.cp.retention.prune(datetime(2025, 3, 1, tzinfo=UTC))
        assert result.partitions == ["evidence_records_y2025m01", "evidence_records_y2025m02"]
        assert [(s.chain_id, s.first_seq, s.last_seq) for s in result.statements] == [("node-c/0", 1, 4)]
        out = private_tmp / "february.pack"
        assert await _export(plane, out, tenant_id="acme") == 1
        report = verify(out, _trusted(plane))
        assert [(c.chain_id, c.from_seq, c.to_seq, c.records) for c in report.chains] == [
            ("node-c/0", 5, 6, 1)
        ]
        assert [(s.first_seq, s.last_seq) for s in report.pruned["node-c/0"]] == [(1, 4)]

        # A gap between what was pruned and what was searched (seq 5 in neither) is named.
        lines = _lines(out)
        at = next(i for i, line in enumerate(lines) if b'"section":"chain"' in line)
        _refused(
            plane,
            _searched_from(lines, at, 6),
            out.with_name("gap.pack"),
            rf"line {at + 1}: chain node-c/0: the searched range 6..6 does not start one after the "
            r"pruned range 1..4 of its pruned-range statement",
        )
