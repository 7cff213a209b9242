"""A message's text parts read as one text: a value split over two parts (``4111 1111`` in
one, ``1111 1111`` in the next) reaches the model whole, so input rules see it whole.

``units_of`` groups the governed texts: the text parts of one message (``messages[i].content[j]``,
consecutive in ``_governed_texts``; an image between two parts does not separate them) become
one ``Joined`` text, every other text stays alone. Rules run on a unit's text; ``Joined``
maps a finding back to its parts (for the evidence) and splits the unit's edits back over
them: an edit goes where its finding starts, and what it covers in the next parts is
removed from them, so no piece of a redacted or masked value is left in any part.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final
from urllib.parse import quote

from dataplane.chat import ImagePart, Message
from dataplane.config.model import Finding

Edit = tuple[int, int, str]
URL: Final = ".url"
"""The field of an image's URL ends so (``messages[i].content[j].url``)."""
_WEB: Final = ("http://", "https://")


def image_urls(messages: Sequence[Message]) -> list[tuple[str, str]]:
    """(field, URL) of every image given by an http(s) URL: the provider fetches it, so what
    its query string carries (an address, a token) leaves with the request. A ``data:`` URL
    (or raw bytes) is the image itself, not text: its payload is not read."""
    return [
        (f"messages[{i}].content[{j}]{URL}", part.url)
        for i, m in enumerate(messages)
        for j, part in enumerate(m.content)
        if isinstance(part, ImagePart) and part.url and part.url[:8].lower().startswith(_WEB)
    ]


def with_image_urls(messages: list[Message], urls: Sequence[tuple[str, str]]) -> None:
    """``messages`` (in place) with the images ``image_urls`` listed given ``urls`` (the same
    fields, in the same order, possibly edited)."""
    at = 0
    for i, m in enumerate(messages):
        content = list(m.content)
        changed = False
        for j, part in enumerate(content):
            if at < len(urls) and urls[at][0] == f"messages[{i}].content[{j}]{URL}":
                if isinstance(part, ImagePart) and urls[at][1] != part.url:
                    content[j] = replace(part, url=urls[at][1])
                    changed = True
                at += 1
        if changed:
            messages[i] = replace(m, content=tuple(content))


class Joined:
    """Texts read as one: the concatenation of ``texts``, and the way back to each."""

    __slots__ = ("fields", "starts", "text")

    def __init__(self, fields: list[str], texts: list[str]) -> None:
        self.fields = fields
        self.text = "".join(texts)
        starts = [0]
        for text in texts:
            starts.append(starts[-1] + len(text))
        self.starts = starts
        """Where each part starts in ``text``, and (last) where the last one ends."""

    def _part(self, offset: int) -> int:
        """The part holding ``text[offset]``."""
        return min(bisect.bisect_right(self.starts, offset) - 1, len(self.fields) - 1)

    def position(self, span: Finding) -> dict[str, Any]:
        """A finding's evidence position in the parts' own offsets: the part where it starts,
        and ``end_field`` when it ends in a later one (then ``end`` is that part's offset)."""
        first = self._part(span.start)
        last = self._part(max(span.start, span.end - 1))
        position: dict[str, Any] = {
            "field": self.fields[first],
            "start": span.start - self.starts[first],
            "end": span.end - self.starts[last],
            "kind": span.kind,
        }
        if last != first:
            position["end_field"] = self.fields[last]
        return position

    def split(self, edits: list[Edit]) -> list[str]:
        """Each part's text with ``edits`` (sorted, disjoint; offsets in ``text``) applied."""
        text = self.text
        starts = self.starts
        out: list[str] = []
        j = 0
        m = len(edits)
        for p in range(len(self.fields)):
            low, high = starts[p], starts[p + 1]
            while j < m and edits[j][1] <= low:
                j += 1  # ended in an earlier part
            pieces: list[str] = []
            at = low
            k = j
            while k < m and edits[k][0] < high:
                start, end, replacement = edits[k]
                if start >= low:
                    pieces += (text[at:start], replacement)
                at = min(max(end, at), high)  # what it covers here is removed
                k += 1
            pieces.append(text[at:high])
            out.append("".join(pieces))
        return out


def _message(field: str) -> str | None:
    """``messages[i]`` for a message's text part ``messages[i].content[j]``, else None."""
    if not field.startswith("messages[") or not field.endswith("]"):
        return None  # not a part's text (an image's URL)
    at = field.find("].content[")
    return field[: at + 1] if at > 0 else None


def units_of(texts: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[Joined | None], list[int]]:
    """``texts`` with each message's text parts joined: the units (field, text), their
    ``Joined`` (None: a text alone) and the index in ``texts`` of each unit's first text."""
    out: list[tuple[str, str]] = []
    joins: list[Joined | None] = []
    firsts: list[int] = []
    i = 0
    n = len(texts)
    while i < n:
        message = _message(texts[i][0])
        k = i + 1
        if message is not None:
            while k < n and _message(texts[k][0]) == message:
                k += 1
        if k - i > 1:
            joined = Joined([f for f, _ in texts[i:k]], [t for _, t in texts[i:k]])
            out.append((texts[i][0], joined.text))
            joins.append(joined)
        else:
            out.append(texts[i])
            joins.append(None)
        firsts.append(i)
        i = k
    return out, joins, firsts


def apply_edits(
    texts: list[tuple[str, str]],
    joins: list[Joined | None],
    firsts: list[int],
    edits: list[list[Edit] | None],
    json_fields: tuple[str, ...],
) -> list[tuple[str, str]]:
    """``texts`` with the edits of each unit (``units_of``) applied: split back over a joined
    unit's parts; in a text whose field ends with one of ``json_fields`` (JSON text), each
    replacement goes in as JSON string content, in an image's URL percent-encoded."""
    out = list(texts)
    for k, taken in enumerate(edits):
        if not taken:
            continue
        i = firsts[k]
        join = joins[k]
        if join is not None:
            for p, text in enumerate(join.split(taken)):
                out[i + p] = (texts[i + p][0], text)
            continue
        field, text = texts[i]
        in_json = field.endswith(json_fields)
        in_url = field.endswith(URL)
        pieces: list[str] = []
        at = 0
        for start, end, replacement in taken:
            if in_json:
                replacement = json.dumps(replacement)[1:-1]
            elif in_url:
                replacement = quote(replacement, safe="")
            pieces += (text[at:start], replacement)
            at = end
        pieces.append(text[at:])
        out[i] = (field, "".join(pieces))
    return out
