"""``ip_address``: IPv4 and IPv6 addresses, validated by ``ipaddress``.

IPv4 is four dotted decimal octets (0-255, no leading zeros, which ``ipaddress`` refuses as
ambiguous octal), not part of a longer dotted number (so version strings such as
``1.2.3.4.5`` and OIDs are not findings). IPv6 is any run of hex digits and colons (with an
optional embedded IPv4 tail and ``%zone``) that ``ipaddress.IPv6Address`` accepts and that
holds at least two colons and a decimal digit; a run of colons alone (``::``), a time such
as ``10:30:00``, a MAC address or a C++/Rust path of hex-looking names (``dead::beef``) is
not a finding. A CIDR suffix (``/24``) is not part of the finding.

Options:

- ``include_private`` (default true): false leaves out private, loopback, link-local and
  other non-global addresses (``ipaddress``'s ``is_global``).

Kinds: ``ipv4``, ``ipv6``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Final

from dataplane.governance.detect import Span
from dataplane.governance.detectors._digits import clusters
from dataplane.governance.detectors._options import Options
from dataplane.governance.detectors._spans import leftmost_longest

MAX_V6: Final = 48
"""Characters on each side of a cluster with a colon searched for an IPv6 address."""
_IPV4: Final = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)", re.ASCII)
# A run may start only where no hex digit, colon or dot precedes it, and the run itself is
# possessive: every character is looked at a bounded number of times.
_IPV6: Final = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:.]++(?:%[\w-]{1,32}+)?(?![\w:])", re.ASCII
)


def _valid_v4(quad: str) -> bool:
    """What ``ipaddress.IPv4Address`` accepts of four dotted groups of 1-3 ASCII digits: each
    at most 255, none with a leading zero (ambiguous octal). A tenth of the library's time."""
    return all(int(octet) <= 255 and (octet[0] != "0" or len(octet) == 1) for octet in quad.split("."))


class IpAddressDetector:
    name = "ip_address"

    def __init__(self, include_private: bool) -> None:
        self._include_private = include_private

    def find(self, text: str) -> list[Span]:
        spans: list[Span] = []
        n = len(text)
        v6_windows: list[tuple[int, int]] = []
        colons = ":" in text  # most texts have none: no IPv6 look per cluster
        for start, end in clusters(text):
            # A dotted quad lies within one cluster (the character after it decides whether
            # it ends there); an IPv6 address, at most 45 characters, holds a cluster with a
            # colon, so a window of that much around such a cluster holds it whole.
            if end - start >= 7 and text.count(".", start, end) >= 3:  # "1.2.3.4" at least
                self._v4(text, start, min(n, end + 1), spans)
            if colons and text.find(":", start, end) >= 0:
                low, high = max(0, start - MAX_V6), min(n, end + MAX_V6)
                if v6_windows and low <= v6_windows[-1][1]:
                    v6_windows[-1] = (v6_windows[-1][0], high)
                else:
                    v6_windows.append((low, high))
        if not v6_windows:
            return spans  # one cluster after another: sorted, and no two overlap
        v4 = len(spans)
        for low, high in v6_windows:
            self._v6(text, low, high, spans)
        # An IPv6 address with an IPv4 tail (::ffff:192.0.2.1) holds an IPv4 finding too.
        return leftmost_longest(spans) if v4 and len(spans) > v4 else spans

    def _v4(self, text: str, low: int, high: int, spans: list[Span]) -> None:
        for match in _IPV4.finditer(text, low, high):
            quad = match.group()
            if not _valid_v4(quad):
                continue
            if self._include_private or ipaddress.IPv4Address(quad).is_global:
                spans.append(Span(match.start(), match.end(), "ipv4"))

    def _v6(self, text: str, low: int, high: int, spans: list[Span]) -> None:
        if text.count(":", low, high) >= 2:
            for match in _IPV6.finditer(text, low, high):
                # A sentence may end right after an address.
                candidate = match.group().rstrip(".")
                # At least one decimal digit: "dead::beef" and "a::b" are code far more often.
                if candidate.count(":") < 2 or len(candidate) > 64 or not any(c.isdigit() for c in candidate):
                    continue
                if match.end() == high < len(text):
                    continue  # cut by the window: the run goes on, longer than any address
                try:
                    address6 = ipaddress.IPv6Address(candidate)
                except ValueError:
                    continue
                if self._include_private or address6.is_global:
                    spans.append(Span(match.start(), match.start() + len(candidate), "ipv6"))


def build(options: Mapping[str, Any]) -> IpAddressDetector:
    """``ip_address``: see the module's docstring for the options."""
    opts = Options(options)
    include_private = opts.boolean("include_private", True)
    opts.done()
    return IpAddressDetector(include_private)
