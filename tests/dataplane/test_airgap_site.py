"""An air-gapped node calls only providers located in its own site (``--site``): started
without it, or with another group's, it refuses every request. It says so once per snapshot
it applies, at WARNING, naming the sites the snapshot's providers are in; a node whose site
is right says nothing."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.config.model import DeploymentMode, ProviderLocation, Scope
from dataplane.routing.query import NodeContext
from dataplane.routing.table import unreachable
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot
from tests.dataplane.routing.support import provider

STORE = "signalbox.dataplane.config"


def _at_lab(base_url: str) -> snapshot_pb2.Snapshot:
    snap = snapshot(1, base_url)
    snap.providers[0].location = snapshot_pb2.PROVIDER_LOCATION_SITE
    snap.providers[0].site = "lab"
    return snap


@pytest.mark.parametrize(("site", "warned"), [("", True), ("elsewhere", True), ("lab", False)])
async def test_an_air_gapped_node_whose_site_has_no_provider_says_so_when_it_applies_a_snapshot(
    site: str,
    warned: bool,
    caplog: pytest.LogCaptureFixture,
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(envelope(_at_lab(simulator.base_url), signing_key).SerializeToString())
    with caplog.at_level(logging.WARNING, logger=STORE):
        node = await start_node(
            mode=DeploymentMode.AIR_GAPPED, scope=Scope(deployment="test", site=site), snapshot_file=pin
        )
    said = [r.getMessage() for r in caplog.records if r.name == STORE and "air-gapped" in r.getMessage()]
    async with grpc.aio.insecure_channel(node.address) as channel:
        await _serves_or_refuses(infer_pb2_grpc.InferServiceStub(channel), site, warned, said)


async def _serves_or_refuses(
    stub: infer_pb2_grpc.InferServiceStub, site: str, warned: bool, said: list[str]
) -> None:
    if warned:
        assert said == [
            f"snapshot 1: this air-gapped node calls only providers located in its own site {site!r}, and "
            "none of the snapshot's 1 providers is (their sites: 'lab'): every request will be refused; "
            "is the node's --site its node group's?"
        ]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Infer(chat("hello"), metadata=AUTH, timeout=10)
        assert f"air-gapped node only calls its own site {site!r}" in (refused.value.details() or "")
    else:
        assert said == []
        answer = await stub.Infer(chat("hello"), metadata=AUTH, timeout=10)
        assert answer.model == "sim-fast"


def test_only_an_air_gapped_node_is_warned_and_only_when_no_provider_is_in_its_site() -> None:
    lab = replace(provider("p1"), location=ProviderLocation.SITE, site="lab")
    cloud = provider("p2")
    air = NodeContext(mode=DeploymentMode.AIR_GAPPED, site="lab")
    assert unreachable([lab, cloud], air) == ""
    assert unreachable([], air) == ""  # nothing to call is not this node's doing
    assert "none is located in a site" in unreachable([cloud], air)
    assert unreachable([cloud], NodeContext(mode=DeploymentMode.ON_PREM)) == ""
    assert unreachable([cloud], NodeContext()) == ""
    many = [replace(provider(f"p{i}"), location=ProviderLocation.SITE, site=f"s{i}") for i in range(7)]
    assert "their sites: 's0', 's1', 's2', 's3', 's4', ..." in unreachable(many, air)
