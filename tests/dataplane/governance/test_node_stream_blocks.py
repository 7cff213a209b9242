"""Two block rules over a streamed answer on a real node: the stream is refused for the rule
the whole answer is, though the later rule's finding is certain while the earlier rule's
still waits at the end of the text seen (the text to come could make it an earlier
redaction's), and nothing of either finding is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.dataplane.conftest import NodeFactory, chat
from tests.dataplane.governance.node_streams import refused_stream, streamed_over_http
from tests.dataplane.governance.test_node_governance import (
    Scripted,
    governed,
    one_record,
    refusal,
    rule,
    scripted,  # noqa: F401  (a fixture)
    serving,
    stub_for,  # noqa: F401  (a fixture)
)

# "word" is certain (window // 2 characters after it) at the scan where "falcon was" ends
# less than window // 2 before the end of the text seen.
ANSWER = "word " + "x" * 45 + "falcon was on " + "x" * 27
PROFILE = {
    "output": {
        "window": 64,
        "rules": [
            rule("stop", "regex", "block", options={"patterns": ["falcon was"]}),
            rule("halt", "terms", "block", options={"terms": ["word"]}),
        ],
    }
}


async def test_a_stream_is_refused_for_the_rule_the_whole_answer_is(
    start_node: NodeFactory,
    scripted: Scripted,  # noqa: F811
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    stub_for: Any,  # noqa: F811
) -> None:
    scripted.answers = {"sim-fast": ANSWER}
    scripted.pieces = [ANSWER[i : i + 11] for i in range(0, len(ANSWER), 11)]
    node = await serving(start_node, governed(scripted.base_url, PROFILE), signing_key, tmp_path)
    stub = stub_for(node)

    refused = await refusal(stub, chat("go", correlation_id="unary"))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'stop'" in (refused.details() or "")

    ended, sent = await refused_stream(stub, "stream-grpc")
    assert ended.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'stop'" in (ended.details() or "")
    assert set(sent) <= {"x", " "}  # nothing of either finding

    body = await streamed_over_http(node, "stream-http")
    assert "event: error" in body
    assert "'stop'" in body
    assert "'halt'" not in body

    for correlation_id in ("unary", "stream-grpc", "stream-http"):
        record = one_record(node, correlation_id)
        assert record["outcome"]["code"] == "PERMISSION_DENIED"
        assert [(e["rule"], e["count"]) for e in record["governance"]] == [("stop", 1)]
