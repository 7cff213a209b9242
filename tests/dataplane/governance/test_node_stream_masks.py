"""Masked values in a streamed answer on a real node: the caller's stream, reassembled, is the
unary answer, also where an output rule's finding begins inside a placeholder (the
stream cut there: ``[E`` went out unrestored, ``MAIL_1]`` after it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope
from tests.dataplane.governance.test_node_governance import (
    EMAIL,
    governed,
    rule,
    serving,
    stub_for,  # noqa: F401  (a fixture)
)

PROMPTS = [
    f"Write to {EMAIL} about the transfer, then to {EMAIL} again about the rest of it.",
    f"Dear {EMAIL} the account of {EMAIL} is closed and {EMAIL} may ask again next week",
]


async def test_a_streamed_answer_with_masked_values_is_the_unary_answer(
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    stub_for: Any,  # noqa: F811
) -> None:
    node = None
    for version, window in enumerate((16, 20, 24), start=1):
        profile = {
            "input": {"rules": [rule("mask-email", "email", "mask")]},
            "output": {
                "window": window,
                # A finding that begins inside a placeholder.
                "rules": [
                    rule("after", "regex", "flag", options={"patterns": ["MAIL_[0-9]\\][ :;]*[a-z ]{0,40}"]})
                ],
            },
        }
        snap = governed(simulator.base_url, profile)
        snap.version = version
        if node is None:
            node = await serving(start_node, snap, signing_key, tmp_path)
        else:
            assert (await node.store.apply(envelope(snap, signing_key))).accepted
        stub = stub_for(node)
        for i, prompt in enumerate(PROMPTS):
            cid = f"{version}-{i}"
            response = await stub.Infer(
                chat(prompt, correlation_id=f"unary-{cid}"), metadata=AUTH, timeout=10
            )
            unary = "".join(p.text for p in response.message.content)
            assert unary == f"Simulated answer to: {prompt}"
            events = stub.InferStream(chat(prompt, correlation_id=f"stream-{cid}"), metadata=AUTH, timeout=10)
            streamed = "".join([e.delta.text async for e in events if e.WhichOneof("event") == "delta"])
            assert streamed == unary, window
