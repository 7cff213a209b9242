"""Whether a node is connected, as the fleet status says it: written when its last sync
stream on a replica ends, and retried when that write could not be made.

A stream that ends while the database is down (restarted, cut off) could not record its
node disconnected, and nothing wrote it later: the node stayed ``connected`` in ``node
list`` (and its group could not be deleted) for good. The disconnects not recorded are
kept here and written once the database answers again (the listener reconnecting, and each
heartbeat round), unless the node has a stream on this replica again by then, and only over
a row nobody has written since the stream ended (the node may have reconnected to another
replica meanwhile: its Hello there is newer, and stays).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from controlplane.db.session import DatabaseClock
from controlplane.services.nodes import NodeService
from signalbox.text import printable

log = logging.getLogger(__name__)

MAX_UNRECORDED = 100_000
"""Disconnects held for a retry at most (one per node id; a node id is at most 256 characters)."""


class Disconnects:
    """Records nodes disconnected; retries what the database did not let be written."""

    def __init__(
        self, nodes: NodeService, clock: DatabaseClock, streaming_here: Callable[[str], bool]
    ) -> None:
        self._nodes = nodes
        self._clock = clock
        self._streaming_here = streaming_here
        self.unrecorded: dict[str, datetime | None] = {}
        """Node id -> when (the database's clock, as this replica reckons it) its last stream
        here ended, for the disconnects not yet written (None: not known)."""

    async def record(self, node_id: str) -> None:
        """The last stream of ``node_id`` on this replica ended."""
        try:
            ended: datetime | None = await self._clock.now(stale_ok=True)
        except Exception:
            ended = None  # never anchored, and the database is down: written unguarded later
        try:
            await self._nodes.disconnected(node_id)
        except Exception as exc:
            log.warning(
                "node %s disconnected, which could not be recorded (%s); retried once the database answers",
                printable(node_id),
                exc,
            )
            if len(self.unrecorded) < MAX_UNRECORDED or node_id in self.unrecorded:
                self.unrecorded[node_id] = ended
        else:
            self.unrecorded.pop(node_id, None)

    async def retry(self) -> None:
        """Write the disconnects not recorded yet (stops at the first the database refuses)."""
        for node_id, ended in list(self.unrecorded.items()):
            if self._streaming_here(node_id):
                # Back on this replica: its Hello wrote it connected, its stream's end will
                # write the rest.
                self.unrecorded.pop(node_id, None)
                continue
            await self._nodes.disconnected(node_id, ended_before=ended)
            self.unrecorded.pop(node_id, None)
            log.info(
                "node %s recorded disconnected (its stream ended while the database was down)",
                printable(node_id),
            )
