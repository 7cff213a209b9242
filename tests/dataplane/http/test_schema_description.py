"""A ``json_schema`` response format's ``description``, sent with the official ``openai``
SDK: carried to a provider whose wire format has a place for it, and governed there as the
schema is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from openai.types.shared_params import ResponseFormatJSONSchema

from tests.dataplane.conftest import API_KEY, NodeFactory
from tests.dataplane.governance.test_node_governance import EMAIL, SCHEMA, governed, one_record, rule, serving


def _format(description: str) -> ResponseFormatJSONSchema:
    return {
        "type": "json_schema",
        "json_schema": {"name": "person", "description": description, "schema": SCHEMA, "strict": True},
    }


async def test_the_description_reaches_the_provider_and_input_rules_read_it(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    # It was checked and dropped: the model never saw the caller's guidance for the answer.
    # Sent on, it is text the provider receives, so a rule must read it as it reads the schema.
    profile = {"input": {"rules": [rule("mask-email", "email", "mask")]}}
    node = await serving(start_node, governed(simulator.base_url, profile), signing_key, tmp_path)
    async with openai.AsyncOpenAI(
        base_url=f"http://{node.http_address}/v1", api_key=API_KEY, max_retries=0
    ) as sdk:
        asked = [{"role": "user", "content": "how old is Ada?"}]
        served = await sdk.chat.completions.create(
            model="sim-fast",
            messages=asked,
            response_format=_format("Ada's age, in years"),  # type: ignore[arg-type]
        )
        assert served.choices[0].message.content
        sent = simulator.stats("sim-fast").last_request["response_format"]["json_schema"]
        assert sent["description"] == "Ada's age, in years"
        assert sent["schema"] == SCHEMA

        await sdk.chat.completions.create(
            model="sim-fast",
            messages=asked,  # type: ignore[arg-type]
            response_format=_format(f"the age of whoever writes from {EMAIL}"),
            extra_headers={"x-request-id": "masked-description"},
        )
    sent = simulator.stats("sim-fast").last_request["response_format"]["json_schema"]
    assert sent["description"] == "the age of whoever writes from [EMAIL_1]"
    (action,) = one_record(node, "masked-description")["governance"]
    assert [p["field"] for p in action["positions"]] == ["response_format.json_schema.description"]
