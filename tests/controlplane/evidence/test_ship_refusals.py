"""Batches refused before anything of them is read into the store: by name, with the chain's
real head in the answer, and never as a failure the node would resend for ever."""

from __future__ import annotations

import json
from pathlib import Path

from controlplane.evidence.ingest import CHAIN_ID_RE
from dataplane.workers import MAX_WORKERS
from tests.controlplane.evidence.conftest import NodeKeys, Stream, write_records
from tests.fixtures.postgres import RunningControlPlane, sql_rows


def _records(evidence_plane: RunningControlPlane) -> int:
    return int(sql_rows(evidence_plane.database_url, "SELECT count(*) FROM evidence_records")[0][0])


async def test_a_checkpoint_with_a_nul_in_another_keys_signature_line_is_refused_by_name(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], node_keys: NodeKeys
) -> None:
    # Signed by the node and verifying: signature lines by other keys are ignored (C2SP), and
    # one of them held a NUL, which the checkpoint's text column cannot: the batch's write
    # failed, UNAVAILABLE "evidence could not be stored now; resend", for ever.
    stream, directory = node
    lines = await write_records(directory, "node-a", 3)
    good = node_keys.checkpoint("node-a", "node-a/0", [json.loads(line)["hash"] for line in lines])
    for extra in ("\u2014 other\x00key AAAA\n", "\u2014 other\x1b[2Jkey AAAA\n", "\u2014 other\rkey AAAA\n"):
        ack = await stream.ship("node-a/0", lines, [good + extra])
        assert (ack.error.code, ack.stored) == ("INVALID_ARGUMENT", 0)
        assert ack.error.message == (
            "chain 'node-a/0': checkpoint 1: control characters other than newlines (a C2SP note has none)"
        )
        assert _records(evidence_plane) == 0
    # The stream goes on: the same batch with the note as the node wrote it is taken.
    ack = await stream.ship("node-a/0", lines, [good])
    assert (ack.head_seq, ack.stored, ack.checkpoints, ack.HasField("error")) == (3, 3, 1, False)


async def test_a_batch_refused_before_it_is_read_still_answers_the_chains_head(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], node_keys: NodeKeys
) -> None:
    # Answered head_seq 0, these told the node's shipper the store had lost the chain
    # ("the store holds less than we were told before"), and it resent it from seq 1.
    stream, directory = node
    lines = await write_records(directory, "node-a", 5)
    assert (await stream.ship("node-a/0", lines)).head_seq == 5
    good = node_keys.checkpoint("node-a", "node-a/0", [json.loads(line)["hash"] for line in lines])
    refused = {
        "a note that does not parse": ([], ["not a note"]),
        "a note that does not verify": ([], [good.replace(good.split("\n\n")[1], "\u2014 node-a AAAA\n")]),
        "too many notes": ([], [good] * 17),
        "too many records": ([b"{}"] * 10_001, []),
    }
    for why, (records, notes) in refused.items():
        ack = await stream.ship("node-a/0", records, notes)
        assert (ack.error.code, ack.head_seq, ack.stored) == ("INVALID_ARGUMENT", 5, 0), why
    assert _records(evidence_plane) == 5
    # A chain that has nothing stored yet: 0 is its head.
    ack = await stream.ship("node-a/1", [], ["not a note"])
    assert (ack.error.code, ack.head_seq) == ("INVALID_ARGUMENT", 0)


def test_a_chain_id_names_one_of_the_workers_a_node_may_run() -> None:
    # Any 1..9 digits were taken as the worker: one certified node could add chain rows without
    # bound, an empty batch each. A node writes its workers' numbers 0..63, no leading zeros.
    taken = {
        w for w in (*map(str, range(1000)), "00", "01", "007", "063") if CHAIN_ID_RE.fullmatch(f"node-a/{w}")
    }
    assert taken == {str(w) for w in range(MAX_WORKERS)}


async def test_a_batch_for_a_worker_no_node_runs_is_refused_and_makes_no_chain(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    stream, _ = node
    for worker in ("64", "999999999", "01"):
        ack = await stream.ship(f"node-a/{worker}", [])
        assert ack.error.code == "INVALID_ARGUMENT"
        assert ack.error.message.startswith("chain_id: must be <node id>/<worker number>")
    assert sql_rows(evidence_plane.database_url, "SELECT chain_id FROM evidence_chains") == []
    assert (await stream.ship("node-a/63", [])).head_seq == 0
