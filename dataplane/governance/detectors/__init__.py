"""The built-in detectors; importing this package registers each under its name.

==================  ==========================================================  ==================
name                finds                                                       kind
==================  ==========================================================  ==================
``email``           e-mail addresses                                            ``address``
``phone``           telephone numbers valid in their numbering plan             region (``DE``)
``payment_card``    card numbers, Luhn and issuer prefix checked                scheme (``visa``)
``iban``            IBANs, mod 97 and country structure checked                 country (``DE``)
``national_id``     national identifiers, checksum (or format) checked          ``NL.bsn``, ...
``ip_address``      IPv4 and IPv6 addresses                                     ``ipv4``, ``ipv6``
``credential``      API keys, tokens, private keys of well-known shapes         shape (``jwt``)
``regex``           a tenant's own patterns (RE2: linear time)                  option
``terms``           a tenant's words and phrases (Aho-Corasick)                 option
==================  ==========================================================  ==================

Each module documents its options and what it deliberately does not find;
``tests/dataplane/governance/corpus/`` holds the labelled samples that measure them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dataplane.governance import detect
from dataplane.governance.detectors import (
    credential,
    email,
    iban,
    ip_address,
    national_id,
    payment_card,
    phone,
    regex,
    terms,
)

BUILT_IN: dict[str, Callable[[Mapping[str, Any]], detect.Detector]] = {
    "email": email.build,
    "phone": phone.build,
    "payment_card": payment_card.build,
    "iban": iban.build,
    "national_id": national_id.build,
    "ip_address": ip_address.build,
    "credential": credential.build,
    "regex": regex.build,
    "terms": terms.build,
}

for _name, _factory in BUILT_IN.items():
    detect.register(_name, _factory)
