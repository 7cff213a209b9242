"""Output rules over a streamed answer, with a bounded look-behind.

A stream cannot be taken back: text goes out only once the rules have seen it with enough
around it. The answer's content and each tool call's arguments are governed alike, each as
its own text (a *channel*): ``StreamGovernor`` holds back a channel's newest text, at most
``window`` characters, and scans when the held text reaches ``window``: the scan covers the
held text and up to ``window`` characters of it already sent (the look-behind, so a finding
across a chunk boundary is seen whole), then sends all but the newest ``window // 2``
characters. So every character is scanned about four times whatever the chunk sizes, and a
finding of up to ``window // 2`` characters is always seen whole before any of it is sent.
A longer one (up to ``window``) may begin in text already sent, and is acted on all the
same once seen: a block ends the stream, a redaction replaces the rest of it. One sent up
to the end of the text seen so far (a PEM private key, longer than any window) is followed:
the look-behind keeps it from its start (up to ``FOLLOWED_WINDOWS`` windows), so each later
scan sees it and redacts what follows until it ends; it is recorded once.

- ``block``: the stream ends with the refusal (the pipeline turns it into the stream's error
  event) as soon as a scan finds it with ``window // 2`` characters after it (the text to
  come may make it an earlier redaction's, as in a whole answer) or the answer ends, which
  is at the latest when ``window`` more characters of that channel have arrived: at or
  before chunk k + window for a finding beginning in chunk k. The evidence says where: the
  field (``message.text``, or ``message.tool_calls[i].arguments``), the chunk of that field
  that carried the finding's start (counting only the chunks that carried some of it) and
  its offset in the field. It says all that scan found, as a refused whole answer's does:
  each finding of the block rule, and those of the rules before it (in the profile's
  order) not recorded yet, though they were held back and never sent. While an earlier
  rule's block finding waits for the text to come, a later rule's waits with it (none of
  either is sent), so that the refusal names the rule the whole answer's would: the earlier
  one unless that text makes its finding an earlier redaction's; by chunk k + window for
  the waiting finding's chunk k. (An earlier rule's block finding further on in the answer
  is not waited for: the stream is refused for the rule the answer read so far is.)
- ``redact``: each finding is replaced before it is sent (in tool call arguments as JSON
  string content, as for a whole answer); a cut never splits one.
- ``flag``: recorded with its offset.

Where findings of several rules overlap, the earlier rule's action stands, as for a whole
answer (``overlaps``): a later block or flag rule does not act on what an earlier redaction
covers, and a later redaction reaching beyond it covers both with its own placeholder.

A tool call's id and name pass at once (a caller learns that a call started); only its
arguments are held. With masked values, the values are put back into what the rules release
(as into a whole answer once the rules are done with it), and a partial placeholder at its end
waits for the rest, so that ``[EMAIL_1]`` split over two chunks, or by a cut at a finding's
edge, is restored whole, in the content and in the arguments. Findings are recorded with offsets in the model's text
(code points), never with values.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from dataplane.chat import StreamChunk, ToolCallDelta
from dataplane.config.model import Action, CompiledProfile, Finding, Rule, Stage
from dataplane.errors import SignalboxError
from dataplane.governance.detectors._digits import forget, share
from dataplane.governance.errors import blocked
from dataplane.governance.overlaps import merged, unclaimed
from dataplane.governance.readable import find as find_in
from dataplane.governance.readable import readable, unescaped

MAX_POSITIONS = 32
"""Positions one evidence entry lists; the count is always exact."""
MAX_PLACEHOLDER_CHARS = 72
"""The longest mask placeholder: a 64-character stem, ``_``, a number and the brackets."""
CONTENT = "message.text"
FOLLOWED_WINDOWS = 64
"""The longest finding a stream's look-behind follows past the window (``_Channel.followed``),
in windows: a PEM private key (the credential detector reads one up to 16 KiB) is redacted
whole under the default window. Each scan then reads up to that much again, every half
window, so the bound is in windows: a finding that never ends (a model writing a key body
forever) costs at most ~128 times the scans of plain text while it is followed."""

Restore = Callable[..., str]
"""Puts a request's masked values back into a text (``RequestGovernor.restore``)."""


class _Channel:
    """One governed text of the answer: its content, or one tool call's arguments."""

    __slots__ = (
        "base",
        "chunk_starts",
        "field",
        "followed",
        "in_json",
        "redactions",
        "sent",
        "text",
        "unrestored",
    )

    def __init__(self, field: str, in_json: bool) -> None:
        self.field = field
        self.in_json = in_json
        """Tool call arguments: JSON text, so a placeholder goes in JSON-escaped."""
        self.text = ""
        """The look-behind (already sent) followed by the held text, as the model wrote it."""
        self.base = 0
        """Offset in the field of ``text[0]``."""
        self.sent = 0
        """Offset in the field up to which text has been sent."""
        self.chunk_starts: list[int] = []
        """Offset in the field where each chunk carrying some of it began."""
        self.redactions: list[tuple[int, int, str]] = []
        """(start, end, placeholder) in ``text`` of what the current release redacts."""
        self.followed: dict[str, int] = {}
        """Rule -> offset in the field of a finding the last release sent up to the end of the
        text it had (it may go on, as a PEM key's body): the look-behind keeps it from its
        start, so that the next scan sees it whole and acts on what follows; recorded once."""
        self.unrestored = ""
        """The end of the text released so far that may be the beginning of a placeholder
        (``[EMAIL`` of ``[EMAIL_1]``): held back from the caller until the rest is released,
        since the values are put back into what the rules release, wherever they cut it."""

    def add(self, piece: str) -> None:
        self.chunk_starts.append(self.base + len(self.text))
        self.text += piece


class StreamGovernor:
    """One streamed answer under its request's profile."""

    __slots__ = ("_actions", "_calls", "_content", "_entries", "_profile", "_restore", "_rules", "_window")

    def __init__(
        self, profile: CompiledProfile, restore: Restore | None, actions: list[dict[str, Any]]
    ) -> None:
        """``restore``: None when the request masked nothing."""
        self._profile = profile
        self._restore = restore
        self._actions = actions
        self._rules = profile.output_rules
        self._window = profile.window
        self._content = _Channel(CONTENT, False)
        self._calls: dict[int, _Channel] = {}
        """Each tool call's arguments, by the call's index."""
        self._entries: dict[str, dict[str, Any]] = {}

    def feed(self, chunk: StreamChunk) -> StreamChunk:
        """What of ``chunk`` may go out now: its text and tool call arguments replaced by
        what the rules release (possibly nothing); everything else passes. A chunk saying
        why the answer ended releases all that is held. Raises the refusal of a block rule."""
        if not self._rules and self._restore is None:
            return chunk  # input rules only: nothing to do to the answer
        final = chunk.finish_reason is not None
        if chunk.text:
            self._content.add(chunk.text)
        released = self._release(self._content, final) if chunk.text or final else ""
        calls = self._calls_released(chunk.tool_calls, final) if chunk.tool_calls or final else ()
        if released == chunk.text and _same(calls, chunk.tool_calls):
            return chunk
        # Built directly: dataclasses.replace was a third of the governor's time per chunk
        # (a test pins StreamChunk's fields to these four).
        return StreamChunk(released, calls, chunk.finish_reason, chunk.usage)

    def finish(self) -> StreamChunk | None:
        """What is held once the upstream has ended (None when nothing is)."""
        if not self._rules and self._restore is None:
            return None
        released = self._release(self._content, True)
        calls = self._calls_released((), True)
        return StreamChunk(text=released, tool_calls=calls) if released or calls else None

    def _calls_released(self, deltas: Sequence[ToolCallDelta], final: bool) -> tuple[ToolCallDelta, ...]:
        """``deltas`` with the arguments each may send now; a delta left with no id, name
        or arguments is dropped. ``final``: every call's held arguments are released."""
        out: list[ToolCallDelta] = []
        for delta in deltas:
            channel = self._calls.get(delta.index)
            if channel is None:
                channel = self._calls[delta.index] = _Channel(
                    f"message.tool_calls[{delta.index}].arguments", True
                )
            if delta.arguments_fragment:
                channel.add(delta.arguments_fragment)
            fragment = self._release(channel, final) if delta.arguments_fragment or final else ""
            if fragment == delta.arguments_fragment:
                out.append(delta)
            elif fragment or delta.id or delta.name:
                out.append(replace(delta, arguments_fragment=fragment))
        if final:
            given = {d.index for d in deltas}
            for index, channel in self._calls.items():
                if index not in given and (fragment := self._release(channel, True)):
                    out.append(ToolCallDelta(index, arguments_fragment=fragment))
        return tuple(out)

    def _release(self, channel: _Channel, final: bool) -> str:
        text = channel.text
        held_at = channel.sent - channel.base
        held = len(text) - held_at
        window = self._window
        if self._rules:
            if not final and held < window:
                return ""
            cut = len(text) if final else _before_escape(text, len(text) - window // 2)
            # The scan moves the cut only to the edge of a finding, and what it records and
            # redacts is what goes out now: nothing may move the cut after it (moved back
            # into a finding it had queued a redaction for, the part before the new cut went
            # out as written, and the finding was recorded again at every release).
            cut = self._scan(channel, held_at, cut, final)
        else:
            cut = len(text)
        out = ""
        if cut > held_at:
            out = _redacted(channel, held_at, cut)
            channel.sent = channel.base + cut
            keep = max(0, cut - window) if self._rules else cut
            if channel.followed:
                keep = min(keep, min(channel.followed.values()) - channel.base)
            if keep:
                channel.text = text[keep:]
                channel.base += keep
        if self._restore is None:
            return out
        # The values go back into the text as released (redacted), as for a whole answer;
        # a placeholder the cut splits (the rules may cut anywhere: at a finding's edge)
        # waits for its end.
        out = channel.unrestored + out
        at = len(out) if final else _partial_placeholder_at(out)
        channel.unrestored = out[at:]
        out = out[:at]
        return self._restore(out, in_json=True) if channel.in_json else self._restore(out)

    def _scan(self, channel: _Channel, held_at: int, cut: int, final: bool) -> int:
        """Run the rules over the channel's text; record what reaches into the held part and
        is sent now; raise for a block rule; return the cut moved so that it splits no finding.

        A finding longer than ``window // 2`` may have begun in text already sent (it was not
        whole yet when that went out): it is acted on all the same, a block ending the stream
        and a redaction replacing what is still held of it, rather than passing unseen.

        A block finding that ends less than ``window // 2`` before the end of the text seen
        (and is held whole) may still be an earlier redaction's: the text to come can complete
        one around it (``falcon was`` of a redacted ``falcon was on``). It is acted on at the
        next scan, with that much more text, and nothing of it is sent before; the end of the
        answer decides at once. A later block rule's finding waits with it, unsent (though
        certain: the whole answer is refused for the earlier rule if its finding stands),
        wherever it begins."""
        text = channel.text
        length = len(text)
        # Read with the JSON escapes JSON does not need decoded, as a model reads them: in
        # arguments (JSON) and in content that holds a backslash (a JSON answer, an escape).
        outer = unescaped(text) if channel.in_json or "\\" in text else None
        view = readable(outer.text if outer is not None else text)
        found: list[tuple[Rule, list[Finding]]] = []
        # The redact rules' edits of the text so far, merged as for a whole answer: a later
        # rule's finding that overlaps one is the earlier rule's (not counted, and a block or
        # flag rule does not act on it) unless it edits too and reaches beyond it.
        edits: list[tuple[int, int, str]] = []
        # The first block rule whose findings are not decided yet, with how many rules before
        # it found something: the cut stays before them and the later block rules' (``hold``).
        waiting: tuple[Rule, list[Finding], int] | None = None
        hold = length
        share()  # the rules' detectors share their scan of the text, for this scan only
        try:
            for rule in self._rules:
                every = (
                    find_in(rule.detector.find, view)
                    if outer is None
                    else find_in(rule.detector.find, outer, view)
                )
                redact = rule.action is Action.REDACT
                if edits and every:
                    every = unclaimed(every, edits, whole=redact)
                if redact and every:
                    edits = merged(edits, every, _placeholder(rule, channel.in_json))
                spans = [s for s in every if s.end > held_at]
                if not spans:
                    continue
                if rule.action is Action.BLOCK:
                    if waiting is None:
                        if final or not _undecided(spans, held_at, length, self._window):
                            raise self._refusal(rule, spans, found, channel)
                        waiting = (rule, spans, len(found))
                    # Waiting, or behind an earlier block rule's finding that waits (if it
                    # stands, the whole answer is refused for that rule): none of it is sent,
                    # though it may begin before the earlier one.
                    hold = min(hold, max(held_at, spans[0].start))
                    continue
                found.append((rule, spans))
        finally:
            forget()
        cut, pushed = _uncut(found, held_at, min(cut, hold), length, self._window)
        if waiting is not None and cut > hold:
            # The cut cannot stay before it (a finding around it is longer than the window).
            rule, spans, before = waiting
            raise self._refusal(rule, spans, found[:before], channel)
        channel.redactions += [
            (max(start, held_at), end, p) for start, end, p in edits if held_at < end <= cut
        ]
        followed = channel.followed
        channel.followed = {}
        base = channel.base
        for rule, spans in found:
            sent = [s for s in spans if s.end <= cut]  # none splits the cut
            if not sent:
                if followed.get(rule.name) == base + spans[0].start:
                    channel.followed[rule.name] = base + spans[0].start  # not sent on yet
                continue
            last = sent[-1]
            if pushed and last.end == cut and cut - last.start <= FOLLOWED_WINDOWS * self._window:
                channel.followed[rule.name] = base + last.start
            if followed.get(rule.name) == base + sent[0].start:
                sent = sent[1:]  # recorded already, when its beginning was sent
            if sent:
                self._record(rule, sent, channel)
        return cut

    def _refusal(
        self, rule: Rule, spans: list[Finding], found: list[tuple[Rule, list[Finding]]], channel: _Channel
    ) -> SignalboxError:
        """The refusal of block ``rule`` for ``spans``, recorded with what the rules before it
        (``found``) found in the same scan: all of it, as for a refused whole answer, though
        none of it was sent (a finding followed was recorded when its start was sent)."""
        for earlier, finds in found:
            if channel.followed.get(earlier.name) == channel.base + finds[0].start:
                finds = finds[1:]
            if finds:
                self._record(earlier, finds, channel)
        self._record(rule, spans, channel)
        # Where the stream ended: at or before chunk k + window for a finding in chunk k.
        self._entries[rule.name]["ended_at_chunk"] = len(channel.chunk_starts) - 1
        return blocked(rule.name, Stage.OUTPUT.value, rule.status)

    def _record(self, rule: Rule, spans: list[Finding], channel: _Channel) -> None:
        entry = self._entries.get(rule.name)
        if entry is None:
            entry = self._entries[rule.name] = {
                "profile": self._profile.profile_id,
                "profile_version": self._profile.version,
                "stage": Stage.OUTPUT.value,
                "rule": rule.name,
                "detector": rule.detector_name,
                "action": rule.action.value,
                "count": 0,
                "positions": [],
            }
            self._actions.append(entry)
        entry["count"] += len(spans)
        positions: list[dict[str, Any]] = entry["positions"]
        base = channel.base
        for s in spans[: max(0, MAX_POSITIONS - len(positions))]:
            start = base + s.start
            chunk = bisect.bisect_right(channel.chunk_starts, start) - 1
            positions.append(
                {"field": channel.field, "chunk": chunk, "start": start, "end": base + s.end, "kind": s.kind}
            )


def _placeholder(rule: Rule, in_json: bool) -> Callable[[int, int], str]:
    """What replaces a finding of ``rule`` (JSON-escaped in JSON text), for ``merged``."""
    placeholder = json.dumps(rule.placeholder)[1:-1] if in_json else rule.placeholder
    return lambda start, end: placeholder


def _undecided(spans: list[Finding], held_at: int, length: int, window: int) -> bool:
    """Whether every one of a block rule's findings (in the held text, whole) ends too near
    the end of the text seen for a redaction around it to have been seen whole."""
    return all(
        held_at <= s.start and length - s.start <= window and s.end + window // 2 > length for s in spans
    )


def _uncut(
    found: list[tuple[Rule, list[Finding]]], held_at: int, cut: int, length: int, window: int
) -> tuple[int, bool]:
    """``cut`` moved so that it splits no finding (of the held text): back to the start of
    the overlapping findings it splits, unless that would hold back more than ``window``,
    else past their end (then True: they may go on past the text seen so far)."""
    low = high = held_at
    for start, end in sorted((max(s.start, held_at), s.end) for _, spans in found for s in spans):
        if start >= high:
            if low < cut < high or start >= cut:
                break
            low = start
        high = max(high, end)
    if low < cut < high:
        return (low, False) if length - low <= window else (high, True)
    return cut, False


def _redacted(channel: _Channel, held_at: int, cut: int) -> str:
    """The channel's ``text[held_at:cut]`` with the findings of redact rules replaced
    (overlapping ones by one placeholder, the earliest's, over them all)."""
    text = channel.text
    redactions = channel.redactions
    if not redactions:
        return text[held_at:cut]
    parts: list[str] = []
    at = held_at
    for start, end, placeholder in sorted(redactions, key=lambda r: r[0]):
        if start < at:
            at = max(at, min(end, cut))  # overlaps the one before: covered by its placeholder
        elif end <= cut:
            parts += (text[at:start], placeholder)
            at = end
    parts.append(text[at:cut])
    redactions.clear()
    return "".join(parts)


def _same(a: tuple[ToolCallDelta, ...], b: tuple[ToolCallDelta, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _before_escape(text: str, cut: int) -> int:
    """``cut``, moved back before a JSON escape it would split (``\\u00`` sent, ``40`` not): a
    channel is read with its escapes decoded, so an edit must not start inside one."""
    at = text.rfind("\\", max(0, cut - 5), cut)
    if at < 0:
        return cut
    first = at
    while first > 0 and text[first - 1] == "\\":
        first -= 1
    if (at - first) % 2 == 1:
        return cut  # the second of an escaped backslash: the pair ends before the cut
    return at if at + (6 if text[at + 1 : at + 2] == "u" else 2) > cut else cut


def _partial_placeholder_at(text: str) -> int:
    """Where the placeholder ``text`` ends with the beginning of begins (``[EMAIL`` of
    ``[EMAIL_1]``); ``len(text)`` when it ends with none."""
    at = text.rfind("[", max(0, len(text) - MAX_PLACEHOLDER_CHARS))
    if at >= 0 and "]" not in text[at:]:
        return at
    return len(text)
