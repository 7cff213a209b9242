"""A stream's events read ahead of the gRPC door's writes, and the deltas ready together sent
as one message.

grpc.aio writes a server stream one message at a time: each ``yield`` of the handler waits
until grpc has taken the message (a trip through its completion-queue thread and back to the
event loop), ~80 us of the node's CPU a message here. Relayed one upstream chunk per
message, a burst of chunks (what one upstream read delivers: a fast model, or a stream that
was held for its contract) was sent at a tenth of the rate it arrived.

``coalesced`` reads the pipeline's events in a task of its own while the door writes, at
most ``READ_AHEAD`` events ahead (past that it stops reading, so a slow client still holds
back the upstream as before), and gives the door the chunks that arrived meanwhile together:
the door sends them as one ``StreamDelta`` (``edge.deltas_to_proto``). Nothing waits to be
merged: a chunk that comes alone goes alone, at once. What a client sees is the same text
and tool-call fragments in the same order, in fewer, larger deltas when it reads slower than
the upstream writes (OpenAI's deltas carry any number of tokens too).

Whatever ends the stream reaches the door in order, after the events before it: the
pipeline's refusal (``Refused``) or error once the events read ahead of it are written, and
the door's own end (the client gone, the handler cancelled) stops the reading task, which
cancels the pipeline step it was in as the door's cancellation did before (the upstream
stream is closed and the request recorded as CANCELLED).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator

from dataplane.chat import StreamChunk
from dataplane.pipeline.call import StreamEvent

READ_AHEAD = 32
"""Events read from the pipeline and not yet given to the door, at most."""
TURN = 8
"""Events read in one go at most before the event loop runs other requests: a burst of chunks
does not hold every other stream's first token behind the pipeline's work on all of it."""
MERGED_CHARS = 16 * 1024
"""Text and tool-call arguments of one merged delta, at most (past it the next chunk starts
the next delta): a message stays far below gRPC's 4 MiB limit whatever the upstream sends."""


async def coalesced(
    events: AsyncIterator[StreamEvent],
) -> AsyncGenerator[StreamEvent | list[StreamChunk], None]:
    """``events`` in order, each run of ``StreamChunk`` ready at once as one list (one chunk
    or more); every other event as itself. The caller closes this generator before closing
    ``events`` itself (the reading task is done by then)."""
    queue: deque[StreamEvent] = deque()
    ready = asyncio.Event()
    """Set when there is something in the queue or the reading has ended."""
    room = asyncio.Event()
    room.set()
    ended: list[BaseException | None] = []
    """The reading's end once it ended: None when ``events`` ran out, else what it raised."""

    async def read() -> None:
        try:
            first, run = True, 0
            async for event in events:
                queue.append(event)
                ready.set()
                run += 1
                if len(queue) >= READ_AHEAD:
                    first, run = False, 0
                    room.clear()
                    await room.wait()
                elif (first and isinstance(event, StreamChunk)) or run >= TURN:
                    # The door takes the first chunk before the rest of a burst is read (the
                    # first token does not wait for the pipeline's work on every chunk that
                    # came with it), and other requests run between every TURN chunks.
                    first, run = False, 0
                    await asyncio.sleep(0)
        except Exception as exc:  # the pipeline's refusal or error: the door's, in order
            ended.append(exc)
        else:
            ended.append(None)
        finally:
            if not ended:  # cancelled: by the door leaving, or else (never left waiting)
                ended.append(asyncio.CancelledError("the stream's reading was cancelled"))
            ready.set()

    reader = asyncio.create_task(read())
    try:
        while True:
            if not queue:
                if ended:
                    if ended[0] is not None:
                        # Not kept in ``ended``, nor in a local: raised, its traceback holds this
                        # frame, which would hold it back (a cycle keeping the request's objects).
                        raise _taken(ended)
                    return
                ready.clear()
                await ready.wait()
                continue
            event = queue.popleft()
            if not isinstance(event, StreamChunk):
                room.set()
                yield event
                continue
            batch = [event]
            size = _size(event)
            while queue:
                following = queue[0]
                if not isinstance(following, StreamChunk):
                    break
                size += _size(following)
                if size > MERGED_CHARS:
                    break
                queue.popleft()
                batch.append(following)
            room.set()
            yield batch
    finally:
        if not reader.done():
            reader.cancel()
        # Awaited even when this generator is being cancelled: ``events`` must be left
        # alone (not mid-step in another task) before the door closes it.
        await asyncio.wait((reader,))
        if not reader.cancelled():
            reader.result()  # nothing: every exception of the reading is kept in ``ended``


def _size(chunk: StreamChunk) -> int:
    return len(chunk.text) + sum(len(call.arguments_fragment) for call in chunk.tool_calls)


def _taken(ended: list[BaseException | None]) -> BaseException:
    """What ended the reading, taken out of ``ended``."""
    error = ended.pop()
    assert error is not None
    return error
