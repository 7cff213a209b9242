"""Pruning what the control plane acknowledged, end to end: a real node with small segments
ships to a real control plane, which goes away and comes back; acknowledged segments (and
only those) are deleted behind a base, the spool counts what is not acknowledged, and after
a restart of the node new records and checkpoints still verify with
``signalbox dataplane evidence verify``, which still names tampering in what remains."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path

from dataplane.app import DataPlaneNode
from dataplane.evidence import segments
from dataplane.evidence.log import log_path
from dataplane.evidence.records import verify_chain
from dataplane.evidence.shipper import cursor_path, read_cursor
from signalbox.shell.simulator import Simulator
from tests.controlplane.test_cli import _signalbox
from tests.e2e.conftest import loopback_node
from tests.e2e.test_config_push import _admin, _converged, _infer, _seed
from tests.e2e.test_controlplane_killed import _free_port
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_rows
from tests.helpers import eventually

NODE = "prune-1"
SEGMENT_BYTES = 8192


async def _requests(node: DataPlaneNode, api_key: str, count: int) -> None:
    for _ in range(count):
        await _infer(node, api_key)


async def _verify_cli(data_dir: Path) -> tuple[int, str]:
    code, out, _ = await _signalbox("dataplane", "evidence", "verify", "--data-dir", str(data_dir))
    return code, out


async def test_acknowledged_segments_are_pruned_and_the_chain_still_verifies(
    database_url: str, private_tmp: Path, simulator: Simulator
) -> None:
    listen, node_listen = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    settings = cp_settings(database_url, private_tmp, listen=listen, node_listen=node_listen)
    options = {
        "evidence_segment_bytes": SEGMENT_BYTES,
        "evidence_checkpoint_records": 10,
        "evidence_checkpoint_interval": 0.1,
    }

    async with AsyncExitStack() as stack:
        first: RunningControlPlane = await stack.enter_async_context(running_control_plane(settings))
        async with _admin(first) as admin:
            api_key = await _seed(admin, simulator)
            node = await loopback_node(first, NODE, private_tmp, **options)
            await node.start()
            stack.push_async_callback(node.stop)
            await _converged(admin, NODE)
        path = log_path(node.settings.data_dir, NODE)
        assert node.shipper is not None
        shipper = node.shipper

        await _requests(node, api_key, 40)
        await eventually(
            lambda: shipper.status.shipped_seq == node.evidence.head.seq, timeout=30, message="all shipped"
        )
        await eventually(lambda: segments.read_base(path) is not None, message="a base written")
        await eventually(
            lambda: len(segments.all_segments(path)) == 1, message="acknowledged segments pruned"
        )
        newest = segments.all_segments(path)[0]
        base = segments.read_base(path)
        assert base is not None
        assert base.seq == newest.start - 1
        assert not path.exists()  # the first segment went with the others
        await eventually(lambda: node.spool.size == 0, message="the spool drained")

        # The control plane goes away: new segments hold unacknowledged records and stay.
        await first.cp.stop()
        await _requests(node, api_key, 40)
        await eventually(lambda: not shipper.status.connected, message="the shipper to notice")
        acked = shipper.status.shipped_seq
        kept = segments.all_segments(path)
        assert len(kept) >= 3
        assert kept[0].start <= acked + 1  # the segment with the first unacknowledged record
        assert segments.read_base(path) == base  # nothing more was pruned
        cursor = read_cursor(cursor_path(path, f"{NODE}/0"))
        assert cursor.seq == acked
        # What the spool counts: every byte of the kept segments after the cursor.
        unacknowledged = sum(s.path.stat().st_size for s in kept)
        unacknowledged -= cursor.offset if cursor.segment == kept[0].start else 0
        assert node.spool.size == unacknowledged > 0
        assert node.spool.status()["bounded"] is True

        async with running_control_plane(settings) as second:
            await eventually(
                lambda: shipper.status.shipped_seq == node.evidence.head.seq, timeout=30, message="drained"
            )
            await eventually(lambda: len(segments.all_segments(path)) == 1, message="pruned after the drain")
            assert node.spool.size == 0
            await node.stop()

            # Restarted on what remains: the tree continues from the base.
            again = await loopback_node(second, NODE, private_tmp, data_dir=node.settings.data_dir, **options)
            await again.start()
            try:
                assert again.evidence.head.seq == node.evidence.head.seq
                await _requests(again, api_key, 30)
                assert again.shipper is not None
                relaunched = again.shipper
                await eventually(
                    lambda: relaunched.status.shipped_seq == again.evidence.head.seq,
                    timeout=30,
                    message="shipped",
                )
                head = again.evidence.head.seq
            finally:
                await again.stop()
            stored = sql_rows(
                database_url, "SELECT count(*), count(DISTINCT (chain_id, seq)) FROM evidence_records"
            )
            assert (stored[0][0], stored[0][1]) == (head, head)  # none lost, none twice

    assert verify_chain(path).seq == head
    code, out = await _verify_cli(node.settings.data_dir)
    pruned = segments.read_base(path)
    assert pruned is not None
    assert code == 0, out
    assert out.startswith(f"OK {NODE}/0 records={head - pruned.seq} ")
    assert out.rstrip().endswith(f"pruned={pruned.seq}")

    # Tampering in a remaining segment is still detected and named.
    remaining = segments.all_segments(path)[-1]
    lines = remaining.path.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[0])
    record["tenant_id"] = "someone-else"
    lines[0] = json.dumps(record).encode() + b"\n"
    remaining.path.write_bytes(b"".join(lines))
    code, out = await _verify_cli(node.settings.data_dir)
    assert code == 1
    assert f"record seq {remaining.start} (line 1 of {remaining.path.name}): hash does not match" in out
