"""Output contracts on a real node: what the schemas callers send may keep in memory."""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.governance.contract import MAX_SCHEMA_COST, REGEX_COST, Contracts
from dataplane.governance.enforce import Governance
from signalbox.api.infer.v1 import infer_pb2
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope
from tests.dataplane.governance.test_node_governance import (
    Scripted,
    governed,
    one_record,
    scripted,  # noqa: F401  (a fixture)
    stub_for,  # noqa: F401  (a fixture)
)


async def test_the_schemas_callers_send_keep_a_bounded_memory_on_the_node(
    start_node: NodeFactory,
    scripted: Scripted,  # noqa: F811
    signing_key: Ed25519PrivateKey,
    stub_for: Any,  # noqa: F811
) -> None:
    # Each caller's distinct schema was kept compiled, up to 512 of them whatever they cost:
    # 40 requests whose 90-character schemas hold one pattern each grew the node by ~320 MB.
    contracts = Contracts()
    node = await start_node(http_listen="127.0.0.1:0", governance=[Governance(contracts)])
    snap = governed(scripted.base_url, {"output": {"contract": {"on_failure": "flag"}}})
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    scripted.answers = {"sim-fast": '{"p": "b"}'}
    stub = stub_for(node)
    for i in range(24):
        schema = {"type": "object", "properties": {"p": {"type": "string", "pattern": f"^a{{{i + 1}}}$"}}}
        request = chat("answer in JSON", correlation_id=f"schema-{i}")
        request.response_format.type = infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA
        request.response_format.schema_name = "p"
        request.response_format.json_schema = json.dumps(schema)
        await stub.Infer(request, metadata=AUTH, timeout=10)
        (entry,) = one_record(node, f"schema-{i}")["governance"]
        assert (entry["rule"], entry["path"], entry["problem"]) == (
            "contract",
            "$.p",
            "breaks schema keyword 'pattern'",
        )
    assert contracts.compiled == 24
    assert len(contracts) <= MAX_SCHEMA_COST // REGEX_COST
    assert contracts.cost <= MAX_SCHEMA_COST
