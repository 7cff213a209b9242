"""An incremental Server-Sent Events decoder, fed one line at a time.

Follows the WHATWG event-stream rules adapters depend on: ``data:`` lines of
one event are joined with ``\\n``, a blank line dispatches, lines starting
with ``:`` are comments (keep-alives), one optional space after the colon is
dropped, and unknown fields are ignored. Line endings are already split off
by ``transport.bounded_lines``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)  # not frozen: made per event, the streaming path's hottest loop; never changed
class SSEEvent:
    """One dispatched event. ``event`` is ``""`` for data-only streams."""

    data: str
    event: str = ""
    id: str = ""


class EventTooLarge(ValueError):
    """An event's data grew past the decoder's ``max_event_chars`` before it was dispatched."""


class SSEDecoder:
    """Accumulates fields until a blank line, then hands back the event.

    ``max_event_chars`` bounds one event's data: many ``data:`` lines without
    a blank one would otherwise grow the buffer without end.
    """

    __slots__ = ("_data", "_event", "_id", "_limit", "_size")

    def __init__(self, max_event_chars: int | None = None) -> None:
        self._data: list[str] = []
        self._event = ""
        self._id = ""
        self._limit = max_event_chars
        self._size = 0

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
            self._size += len(value) + 1
            if self._limit is not None and self._size > self._limit:
                self._data, self._size = [], 0
                raise EventTooLarge(f"event data exceeds {self._limit} characters")
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
        self._size = 0
        self._event = ""
        return event
