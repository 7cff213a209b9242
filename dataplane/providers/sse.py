"""An incremental Server-Sent Events decoder, fed one line at a time.

Follows the WHATWG event-stream rules adapters depend on: ``data:`` lines of
one event are joined with ``\\n``, a blank line dispatches, lines starting
with ``:`` are comments (keep-alives), one optional space after the colon is
dropped, and unknown fields are ignored. Line endings are already split off
by ``httpx.Response.aiter_lines``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. ``event`` is ``""`` for data-only streams."""

    data: str
    event: str = ""
    id: str = ""


class SSEDecoder:
    """Accumulates fields until a blank line, then hands back the event."""

    __slots__ = ("_data", "_event", "_id")

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""
        self._id = ""

    def feed(self, line: str) -> SSEEvent | None:
        """Consume one line (without its ending); return an event when one completes."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None

    def flush(self) -> SSEEvent | None:
        """At end of stream: the last event if the server omitted its closing blank line.

        The spec drops such an event; we hand it on, because the adapter's own
        terminator check and JSON parsing catch a truncated one anyway, while a
        complete final event from a sloppy server is worth keeping.
        """
        return self._dispatch()

    def _dispatch(self) -> SSEEvent | None:
        if not self._data and not self._event:
            return None
        event = SSEEvent(data="\n".join(self._data), event=self._event, id=self._id)
        self._data = []
        self._event = ""
        return event
