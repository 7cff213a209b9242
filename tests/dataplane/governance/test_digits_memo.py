"""The digit detectors' shared scan (``detectors/_digits.py``): kept per thread and per
governance step only, so threads never meet one another's texts and no text outlives its
request in a module of the node."""

from __future__ import annotations

import sys
import threading
from typing import Any

from dataplane.chat import ChatRequest, Message, Role, TextPart
from dataplane.governance import detect
from dataplane.governance.contract import Contracts
from dataplane.governance.detectors import _digits
from dataplane.governance.enforce import RequestGovernor
from dataplane.governance.profile import compile_profile

DIGIT_DETECTORS = ["phone", "payment_card", "iban", "national_id", "ip_address"]
RULES = [{"name": name, "detector": name, "action": "flag"} for name in DIGIT_DETECTORS]


def sample(i: int) -> str:
    """A text with findings for every digit detector, different for each ``i``."""
    return (
        f"Call +49 30 1234567{i % 10} or (415) 555-2671, card 4111 1111 1111 1111, "
        f"IBAN DE89 3704 0044 0532 0130 00, BSN 111222333, host 10.0.{i % 250}.7, "
        f"order {i:08d}-{i % 97:02d}."
    )


def findings(text: str) -> list[tuple[str, int, int, str]]:
    return [(name, s.start, s.end, s.kind) for name in DIGIT_DETECTORS for s in detect.build(name).find(text)]


def test_no_text_is_kept_after_a_detector_call_or_a_governance_step() -> None:
    text = "".join(["tel +49 30 12345678, card 4111 1111 1111 1111 ", "(a text of its own)"])
    before = sys.getrefcount(text)
    assert findings(text)
    assert sys.getrefcount(text) == before
    g = RequestGovernor(compile_profile({"input": {"rules": RULES}}, version=1, profile_id="gp"), Contracts())
    actions: list[dict[str, Any]] = []
    body = ChatRequest(messages=(Message(Role.USER, (TextPart(text),)),))
    g.govern_input(body, actions)
    assert {a["rule"] for a in actions} >= {"phone", "payment_card"}
    del body
    assert sys.getrefcount(text) == before


def test_threads_find_the_same_as_one_thread_and_never_share_a_memo() -> None:
    texts = [sample(i) for i in range(40)]
    expected = [findings(t) for t in texts]
    seen: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(offset: int) -> None:
        try:
            start.wait()
            mine = [sample(i) for i in range(40)]  # equal texts, other objects
            for round_ in range(5):
                _digits.share()  # as a governance step does
                try:
                    for i in range(offset + round_, offset + round_ + 40):
                        k = i % 40
                        assert findings(mine[k]) == expected[k]
                    seen.append([entry[0] for entry in _digits._local.entries])
                    assert all(any(t is m for m in mine) for t in seen[-1])
                finally:
                    _digits.forget()
        except BaseException as exc:  # a thread's failure is the test's
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        threads = [threading.Thread(target=work, args=(7 * k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[0]
    assert len(seen) == 20
    assert all(len(memo) == _digits.MEMO for memo in seen)
    assert getattr(_digits._local, "entries", None) is None  # none in this thread either
