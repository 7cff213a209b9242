"""Snapshots carry governance profiles: compiled on apply, a bad one refused by path, and a
tenant without its own governed by the platform default."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.errors import SnapshotInvalid
from dataplane.snapshot.compile import compile_payload
from signalbox.api.config.v1 import snapshot_pb2
from tests.dataplane.conftest import NodeFactory, envelope, snapshot

BLOCK_SECRET = {
    "input": {
        "rules": [
            {"name": "no-secret", "detector": "terms", "options": {"terms": ["secret"]}, "action": "block"}
        ]
    }
}


def with_profiles(*profiles: tuple[str, Any]) -> snapshot_pb2.Snapshot:
    snap = snapshot(1, "http://127.0.0.1:9")
    for i, (tenant_id, document) in enumerate(profiles):
        text = document if isinstance(document, str) else json.dumps(document)
        snap.governance_profiles.add(id=f"gp{i}", tenant_id=tenant_id, version=i + 1, document_json=text)
    return snap


def refusal(snap: snapshot_pb2.Snapshot) -> tuple[str, str]:
    with pytest.raises(SnapshotInvalid) as caught:
        compile_payload(snap.SerializeToString())
    return caught.value.path, caught.value.problem


def test_no_profile_means_no_governance() -> None:
    config = compile_payload(with_profiles().SerializeToString())
    assert config.governance == {}
    assert config.governance_for("t-acme") is None


def test_a_tenant_without_its_own_profile_gets_the_platform_default() -> None:
    config = compile_payload(with_profiles(("", {}), ("t-acme", BLOCK_SECRET)).SerializeToString())
    own, default = config.governance_for("t-acme"), config.governance_for("t-dormant")
    assert own is not None
    assert (own.profile_id, own.version, own.input_rules[0].name) == ("gp1", 2, "no-secret")
    assert default is not None
    assert default.profile_id == "gp0"


@pytest.mark.parametrize(
    ("profiles", "path", "words"),
    [
        ((("t-nobody", {}),), "$.governance_profiles[0].tenant_id", "unknown tenant 't-nobody'"),
        ((("t-acme", {}), ("t-acme", {})), "$.governance_profiles[1].tenant_id", "more than one"),
        ((("", {}), ("", {})), "$.governance_profiles[1].tenant_id", "platform default"),
        ((("", "{not json"),), "$.governance_profiles[0].document_json", "not JSON"),
        ((("", {"limits": {"max_tools": -1}}),), "$.governance_profiles[0].document.limits.max_tools", ""),
        (
            (
                (
                    "",
                    {
                        "input": {
                            "rules": [
                                {
                                    "name": "x",
                                    "detector": "terms",
                                    "options": {"terms": "secret"},
                                    "action": "flag",
                                }
                            ]
                        }
                    },
                ),
            ),
            "$.governance_profiles[0].document.input.rules[0].options.terms",
            "",
        ),
        (
            (("", {"input": {"rules": [{"name": "x", "detector": "nope", "action": "flag"}]}}),),
            "$.governance_profiles[0].document.input.rules[0].detector",
            "unknown detector",
        ),
    ],
)
def test_a_bad_profile_makes_the_snapshot_invalid_naming_it(
    profiles: tuple[tuple[str, Any], ...], path: str, words: str
) -> None:
    found, problem = refusal(with_profiles(*profiles))
    assert found == path
    assert words in problem


async def test_a_node_refuses_a_bad_profile_and_keeps_its_last_good_snapshot(
    start_node: NodeFactory, signing_key: Ed25519PrivateKey
) -> None:
    node = await start_node()
    good = with_profiles(("", BLOCK_SECRET))
    assert (await node.store.apply(envelope(good, signing_key))).accepted
    bad = with_profiles(("", {"output": {"rules": [{"name": "m", "detector": "email", "action": "mask"}]}}))
    bad.version = 2
    result = await node.store.apply(envelope(bad, signing_key))
    assert not result.accepted
    assert "$.governance_profiles[0].document.output.rules[0].action" in result.reason
    state = node.store.require()
    assert state.version == 1
    assert state.config.governance_for("t-acme") is not None
