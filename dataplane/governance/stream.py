"""Output rules over a streamed answer, with a bounded look-behind.

A stream cannot be taken back: text goes out only once the rules have seen it with enough
around it. ``StreamGovernor`` holds back the answer's newest text, at most ``window``
characters, and scans when the held text reaches ``window``: the scan covers the held text
and up to ``window`` characters already sent before it (the look-behind, so a finding across
a chunk boundary is seen whole), then sends all but the newest ``window // 2`` characters.
So every character is scanned about four times whatever the chunk sizes, and a finding of
up to ``window // 2`` characters is always seen whole before any of it is sent.

- ``block``: the stream ends with the refusal (the pipeline turns it into the stream's error
  event) as soon as a scan finds it, which is at the latest when ``window // 2`` more
  characters have arrived: at or before chunk k + window for a finding in chunk k. The
  evidence says where: the chunk that carried its start, and its offset in the answer.
- ``redact``: each finding is replaced before it is sent; a cut never splits one.
- ``flag``: recorded with its offset.

With masked values (and no output rules) only a trailing partial placeholder is held back,
so that ``[EMAIL_1]`` split over two chunks is restored whole. Findings are recorded with
offsets in the model's answer (code points), never with values. Tool call deltas pass
through (their complete placeholders restored); rules apply to the answer's text.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from dataplane.chat import StreamChunk
from dataplane.config.model import Action, CompiledProfile, Finding, Rule, Stage
from dataplane.governance.errors import blocked

MAX_POSITIONS = 32
"""Positions one evidence entry lists; the count is always exact."""
MAX_PLACEHOLDER_CHARS = 72
"""The longest mask placeholder: a 64-character stem, ``_``, a number and the brackets."""

Restore = Callable[..., str]
"""Puts a request's masked values back into a text (``RequestGovernor.restore``)."""


class StreamGovernor:
    """One streamed answer under its request's profile."""

    __slots__ = (
        "_actions",
        "_base",
        "_chunk_starts",
        "_chunks",
        "_entries",
        "_profile",
        "_redactions",
        "_restore",
        "_rules",
        "_sent",
        "_text",
        "_window",
    )

    def __init__(
        self, profile: CompiledProfile, restore: Restore | None, actions: list[dict[str, Any]]
    ) -> None:
        """``restore``: None when the request masked nothing."""
        self._profile = profile
        self._restore = restore
        self._actions = actions
        self._rules = profile.output_rules
        self._window = profile.window
        self._text = ""
        """The look-behind (already sent) followed by the held text, as the model wrote it."""
        self._base = 0
        """Offset in the answer of ``_text[0]``."""
        self._sent = 0
        """Offset in the answer up to which text has been sent."""
        self._chunks = 0
        self._chunk_starts: list[int] = []
        """Offset in the answer where each chunk with text began (index: the chunk's)."""
        self._entries: dict[str, dict[str, Any]] = {}
        self._redactions: list[tuple[int, int, str]] = []
        """(start, end, placeholder) in ``_text`` of what the current release redacts."""

    def feed(self, chunk: StreamChunk) -> StreamChunk:
        """What of ``chunk`` may go out now: its text replaced by what the rules release
        (possibly nothing); everything else passes. A chunk saying why the answer ended
        releases all that is held. Raises the refusal of a block rule."""
        if not self._rules and self._restore is None:
            return chunk  # input rules only: nothing to do to the answer
        if chunk.text:
            self._chunk_starts.append(self._base + len(self._text))
            self._text += chunk.text
        final = chunk.finish_reason is not None
        released = self._release(final) if chunk.text or final else ""
        calls = chunk.tool_calls
        restore = self._restore
        if calls and restore is not None:
            calls = tuple(
                replace(d, arguments_fragment=restore(d.arguments_fragment, in_json=True)) for d in calls
            )
        if released == chunk.text and calls is chunk.tool_calls:
            return chunk
        return replace(chunk, text=released, tool_calls=calls)

    def finish(self) -> StreamChunk | None:
        """The held text once the upstream has ended (None when nothing is held)."""
        released = self._release(True)
        return StreamChunk(text=released) if released else None

    def _release(self, final: bool) -> str:
        text = self._text
        held_at = self._sent - self._base
        held = len(text) - held_at
        window = self._window
        if self._rules:
            if not final and held < window:
                return ""
            cut = len(text) if final else len(text) - window // 2
            cut = self._scan(text, held_at, cut)
        else:
            cut = len(text)
        if self._restore is not None and not final:
            cut = _before_partial_placeholder(text, held_at, cut)
        if cut <= held_at:
            return ""
        out = self._redacted(text, held_at, cut)
        self._sent = self._base + cut
        keep = max(0, cut - window) if self._rules else cut
        if keep:
            self._text = text[keep:]
            self._base += keep
        return self._restore(out) if self._restore is not None else out

    def _scan(self, text: str, held_at: int, cut: int) -> int:
        """Run the rules over ``text``; record what starts in the held part and is sent now;
        raise for a block rule; return the cut moved so that it splits no finding."""
        window = self._window
        redactions = self._redactions
        for rule in self._rules:
            spans = [s for s in rule.detector.find(text) if s.start >= held_at]
            if not spans:
                continue
            if rule.action is Action.BLOCK:
                self._record(rule, spans[:1])
                # Where the stream ended: at or before chunk k + window for a finding in chunk k.
                self._entries[rule.name]["ended_at_chunk"] = len(self._chunk_starts) - 1
                raise blocked(rule.name, Stage.OUTPUT.value, rule.status)
            for s in spans:
                if s.start < cut < s.end:
                    # Keep a finding whole: held back, unless that would hold more than the window.
                    cut = s.start if len(text) - s.start <= window else s.end
            sent = [s for s in spans if s.start < cut]
            if sent:
                self._record(rule, sent)
                if rule.action is Action.REDACT:
                    redactions.extend((s.start, s.end, rule.placeholder) for s in sent)
        return cut

    def _redacted(self, text: str, held_at: int, cut: int) -> str:
        """``text[held_at:cut]`` with the findings of redact rules replaced (the first rule's
        placeholder where two overlap)."""
        redactions = self._redactions
        if not redactions:
            return text[held_at:cut]
        parts: list[str] = []
        at = held_at
        for start, end, placeholder in sorted(redactions, key=lambda r: r[0]):
            if start >= at and end <= cut:
                parts += (text[at:start], placeholder)
                at = end
        parts.append(text[at:cut])
        redactions.clear()
        return "".join(parts)

    def _record(self, rule: Rule, spans: list[Finding]) -> None:
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
        for s in spans[: max(0, MAX_POSITIONS - len(positions))]:
            start = self._base + s.start
            chunk = bisect.bisect_right(self._chunk_starts, start) - 1
            positions.append({"chunk": chunk, "start": start, "end": self._base + s.end, "kind": s.kind})


def _before_partial_placeholder(text: str, held_at: int, cut: int) -> int:
    """``cut``, moved back before a placeholder it would split (``[EMAIL`` sent, ``_1]`` not)."""
    at = text.rfind("[", max(held_at, cut - MAX_PLACEHOLDER_CHARS), cut)
    if at >= 0 and "]" not in text[at:cut]:
        return at
    return cut
