"""The built-in detectors; importing this package registers each under its name.

==================  ==========================================================  =============
name                finds                                                       kind
==================  ==========================================================  =============
``email``           e-mail addresses                                            ``address``
``terms``           a tenant's words and phrases (Aho-Corasick)                 option
``iban``            IBANs, mod 97 and country structure checked                 country code
==================  ==========================================================  =============

Each module documents its options and what it deliberately does not find;
``tests/dataplane/governance/corpus/`` holds the labelled samples that measure them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dataplane.governance import detect
from dataplane.governance.detectors import email, iban, terms

BUILT_IN: dict[str, Callable[[Mapping[str, Any]], detect.Detector]] = {
    "email": email.build,
    "iban": iban.build,
    "terms": terms.build,
}

for _name, _factory in BUILT_IN.items():
    detect.register(_name, _factory)
