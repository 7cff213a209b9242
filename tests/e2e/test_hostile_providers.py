"""Hostile providers through a real node: their words never reach a caller or the evidence.

One ``DataPlaneNode`` serves a signed snapshot with, for every registered provider
type, a provider pointing at a ``HostileUpstream`` that speaks that type's wire
format and echoes the node's credential (plain, masked, upper-case, base64, ...)
in every error it sends, with huge fields, garbage and broken streams. Each
(type, behaviour, RPC) gets its own model and deployment (so breakers of one case
never touch another), called over gRPC as an application would. For each:

- the caller gets the documented status and a message that is ours: the provider
  type and HTTP status, none of the upstream's text, no form of the credential;
- the request's evidence record holds none of it either (attempt errors, outcome);
- neither do the node's log lines, though they keep the operator's (redacted) detail;
- a model whose first deployment answers 404 "model not found" is served by its
  second deployment on another endpoint, and the evidence shows the fallback;
- so is a model whose first deployment answers 429 with a year-long Retry-After
  (the next request skips it, for no longer than the node's cap) or is slower than
  its provider's timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataplane.app import DataPlaneNode
from dataplane.config.model import Scope
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.node_settings import NodeSettings
from dataplane.providers.registry import BUILTIN_ADAPTERS
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.providers.hostile import (
    BEHAVIOURS,
    MARKER,
    SERVED_BEHAVIOURS,
    STREAM_ONLY_BEHAVIOURS,
    HostileUpstream,
    echo_forms,
)
from tests.dataplane.providers.test_cross_provider import WIRES
from tests.fixtures.keys import sign_payload
from tests.helpers import eventually

TYPES = sorted(BUILTIN_ADAPTERS)
API_KEY = "sk-hostile-tenant-0123456789"
AUTH = (("authorization", f"Bearer {API_KEY}"),)
CREDENTIAL = "sk-PROJ-node-upstream-Secret-7f3c9a2b41d0ffff"
"""The node's credential for every hostile provider; what they echo back."""
TIMEOUT = 10.0
RPCS = ("Infer", "InferStream")

EXPECTED: Mapping[str, tuple[grpc.StatusCode, str]] = {
    "echo-400": (grpc.StatusCode.INVALID_ARGUMENT, "upstream rejected the request as invalid (HTTP 400)"),
    "echo-401": (grpc.StatusCode.UNAVAILABLE, "upstream rejected the node's credential (HTTP 401)"),
    "echo-429": (grpc.StatusCode.RESOURCE_EXHAUSTED, "upstream rate limited the request (HTTP 429)"),
    "echo-500": (grpc.StatusCode.UNAVAILABLE, "upstream failed (HTTP 500)"),
    "huge-500": (grpc.StatusCode.UNAVAILABLE, "upstream failed (HTTP 500)"),
    "not-found": (grpc.StatusCode.UNAVAILABLE, "upstream does not serve the deployment's model (HTTP 404)"),
    "in-band": (grpc.StatusCode.UNAVAILABLE, "upstream failed (in-band error)"),
    "garbage": (grpc.StatusCode.UNAVAILABLE, "upstream sent malformed output (invalid JSON)"),
    "negative-usage": (grpc.StatusCode.UNAVAILABLE, "upstream sent malformed output (unexpected JSON shape"),
    "deep-json": (grpc.StatusCode.UNAVAILABLE, "upstream sent malformed output (JSON nested too deeply)"),
    "mid-stream": (grpc.StatusCode.UNAVAILABLE, "upstream failed (in-band error)"),
    "huge-event": (grpc.StatusCode.UNAVAILABLE, "upstream sent malformed output (a stream line exceeds"),
}
"""Per behaviour: the caller's status and the words after ``<type>: `` in its message."""

CASES = [
    (type_name, behaviour, rpc)
    for type_name in TYPES
    for rpc in RPCS
    for behaviour in (*BEHAVIOURS, *(STREAM_ONLY_BEHAVIOURS if rpc == "InferStream" else ()))
]
CHAT_CAPS = (common_pb2.CAPABILITY_CHAT, common_pb2.CAPABILITY_STREAMING)
_WIRE_PATH = {w.type_name: w.path for w in WIRES}
_SETTINGS = {w.type_name: w.settings for w in WIRES}


def alias(type_name: str, behaviour: str, rpc: str) -> str:
    return f"{type_name}-{behaviour}-{rpc}".lower()


def leaks(text: str) -> list[str]:
    """What of the hostile upstreams' words or the credential is findable in ``text``."""
    found = [name for name, form in echo_forms(CREDENTIAL).items() if form in text]
    lowered = text.lower()
    if CREDENTIAL[8:-4].lower() in lowered:
        found.append("credential middle")
    if MARKER.lower() in lowered:
        found.append("upstream text")
    if "forged" in lowered:
        found.append("forged log line")
    return found


@dataclass(frozen=True)
class Site:
    node: DataPlaneNode
    stub: infer_pb2_grpc.InferServiceAsyncStub
    hostile: Mapping[str, HostileUpstream]
    healthy: Mapping[str, HostileUpstream]


def _provider(
    snap: snapshot_pb2.Snapshot,
    pid: str,
    type_name: str,
    url: str,
    credential_file: Path,
    timeout_ms: int = 0,
) -> None:
    provider = snap.providers.add(
        id=pid,
        name=pid,
        type=type_name,
        base_url=url + _WIRE_PATH[type_name],
        settings=_SETTINGS[type_name],
        timeout_ms=timeout_ms,
    )
    provider.credential.file = str(credential_file)


MAX_RETRY_AFTER_S = 5.0
"""The node's cap on an upstream's Retry-After in this test."""
SLOW_PROVIDER_TIMEOUT_MS = 500
STALLS = {"retry-after-31536000": "rate_limited", "slow-5000": "timeout"}
"""Behaviours of a first deployment that must not hold a request up: a year-long
Retry-After, an upstream slower than the provider's timeout; and the attempt's outcome."""


def _model(snap: snapshot_pb2.Snapshot, name: str) -> Any:
    return snap.models.add(id=f"m-{name}", alias=name, capabilities=CHAT_CAPS, context_window=128_000)


def build_snapshot(
    hostile: Mapping[str, HostileUpstream], healthy: Mapping[str, HostileUpstream], credential_file: Path
) -> snapshot_pb2.Snapshot:
    snap = snapshot_pb2.Snapshot(version=1, scope=snapshot_pb2.Scope(deployment="hostile"))
    snap.created_at.FromSeconds(1_700_000_000)
    snap.tenants.add(id="t-acme", name="acme", active=True)
    snap.api_keys.add(
        id="k-acme", tenant_id="t-acme", secret_sha256=hashlib.sha256(API_KEY.encode()).digest()
    )
    for type_name in TYPES:
        _provider(snap, f"hostile-{type_name}", type_name, hostile[type_name].base_url, credential_file)
        _provider(snap, f"healthy-{type_name}", type_name, healthy[type_name].base_url, credential_file)
        _provider(
            snap,
            f"stalling-{type_name}",
            type_name,
            hostile[type_name].base_url,
            credential_file,
            timeout_ms=SLOW_PROVIDER_TIMEOUT_MS,
        )
    for type_name, behaviour, rpc in CASES:
        name = alias(type_name, behaviour, rpc)
        _model(snap, name).deployments.add(
            id=f"d-{name}", provider_id=f"hostile-{type_name}", upstream_model=behaviour
        )
    for type_name in TYPES:
        for behaviour in SERVED_BEHAVIOURS:
            for rpc in RPCS:
                name = alias(type_name, behaviour, rpc)
                _model(snap, name).deployments.add(
                    id=f"d-{name}", provider_id=f"hostile-{type_name}", upstream_model=behaviour
                )
    for type_name in TYPES:
        for rpc in RPCS:
            model = _model(snap, alias(type_name, "pair", rpc))
            # The 404 deployment carries nearly all the weight: it is tried first (the
            # correlation ids below are fixed, so the split is too), the healthy one falls in.
            model.deployments.add(
                id=f"d-pair-404-{type_name}-{rpc}".lower(),
                provider_id=f"hostile-{type_name}",
                upstream_model="not-found",
                weight=1_000_000,
            )
            model.deployments.add(
                id=f"d-pair-ok-{type_name}-{rpc}".lower(),
                provider_id=f"healthy-{type_name}",
                upstream_model="ok",
                weight=1,
            )
    for type_name in TYPES:
        for behaviour in STALLS:
            for rpc in RPCS:
                model = _model(snap, alias(type_name, f"stall-{behaviour}", rpc))
                model.deployments.add(
                    id=f"d-stall-{behaviour}-{type_name}-{rpc}".lower(),
                    provider_id=f"stalling-{type_name}",
                    upstream_model=behaviour,
                    weight=1_000_000,
                )
                model.deployments.add(
                    id=f"d-stall-ok-{behaviour}-{type_name}-{rpc}".lower(),
                    provider_id=f"healthy-{type_name}",
                    upstream_model="ok",
                    weight=1,
                )
    # One pass over the deployments; a fallback to the next one is allowed.
    policy = {
        "default_model": alias(TYPES[0], "pair", "Infer"),
        "allowed_models": sorted(m.alias for m in snap.models),
        "retry": {"max_attempts": 2, "attempts_per_deployment": 1},
    }
    snap.policies.add(id="pol-acme", tenant_id="t-acme", version=1, document_json=json.dumps(policy))
    return snap


@pytest.fixture(scope="module")
async def site(private_tmp: Path) -> AsyncIterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="hostile-", dir=private_tmp))
    signing_key = Ed25519PrivateKey.generate()
    trust = root / "trust.pem"
    trust.write_bytes(signing_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    # Where a node reads provider credential files by default: <data_dir>/credentials.
    (root / "node" / "credentials").mkdir(parents=True)
    (root / "node" / "credentials" / "upstream.key").write_text(CREDENTIAL + "\n")
    credential_file = Path("upstream.key")
    hostile = {t: await HostileUpstream(t).start() for t in TYPES}
    healthy = {t: await HostileUpstream(t).start() for t in TYPES}
    node = DataPlaneNode(
        NodeSettings(
            listen="127.0.0.1:0",
            trust_keys=(trust,),
            node_id="node-hostile",
            data_dir=root / "node",
            scope=Scope(deployment="hostile"),
            drain_seconds=0.0,
            max_retry_after=MAX_RETRY_AFTER_S,
        )
    )
    try:
        await node.start()
        payload = build_snapshot(hostile, healthy, credential_file).SerializeToString()
        result = await node.store.apply(sign_payload(payload, signing_key))
        assert result.accepted, result.reason
        async with grpc.aio.insecure_channel(node.address) as channel:
            yield Site(node, infer_pb2_grpc.InferServiceStub(channel), hostile, healthy)
    finally:
        await node.stop(0)
        for upstream in (*hostile.values(), *healthy.values()):
            await upstream.stop()


def request(model: str, correlation_id: str) -> infer_pb2.InferRequest:
    out = infer_pb2.InferRequest(model=model, correlation_id=correlation_id)
    out.messages.add(role=infer_pb2.ROLE_USER).content.add(text="Say hello")
    return out


async def call(site: Site, rpc: str, model: str, correlation_id: str) -> Any:
    """The unary response, or the stream's events; raises the call's ``AioRpcError``."""
    async with asyncio.timeout(TIMEOUT):
        if rpc == "Infer":
            return await site.stub.Infer(request(model, correlation_id), metadata=AUTH, timeout=TIMEOUT)
        stream = site.stub.InferStream(request(model, correlation_id), metadata=AUTH, timeout=TIMEOUT)
        return [event async for event in stream]


async def evidence_of(site: Site, correlation_id: str) -> dict[str, Any]:
    path = log_path(site.node.settings.data_dir, site.node.settings.node_id)

    def found() -> dict[str, Any]:
        records = [r for r in read_records(path) if r.get("correlation_id") == correlation_id]
        assert records, f"no evidence record for {correlation_id} yet"
        assert len(records) == 1, "exactly one evidence record per request"
        return records[0]

    return await eventually(found, message=f"the evidence record of {correlation_id}")


def test_every_type_and_behaviour_has_a_case() -> None:
    assert {t for t, _, _ in CASES} == set(TYPES) == set(_WIRE_PATH)
    assert set(EXPECTED) == {*BEHAVIOURS, *STREAM_ONLY_BEHAVIOURS}
    assert not set(SERVED_BEHAVIOURS) & set(EXPECTED)


@pytest.mark.parametrize(("type_name", "behaviour", "rpc"), CASES, ids=["-".join(c) for c in CASES])
async def test_nothing_a_hostile_provider_says_reaches_the_caller_or_the_evidence(
    site: Site, type_name: str, behaviour: str, rpc: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    correlation_id = f"cid-{alias(type_name, behaviour, rpc)}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(site, rpc, alias(type_name, behaviour, rpc), correlation_id)
    assert site.hostile[type_name].calls.get(behaviour, 0) >= 1, "the hostile upstream was reached"

    status, words = EXPECTED[behaviour]
    details = caught.value.details() or ""
    assert caught.value.code() is status, details
    # Alone, or as the last of "all N attempt(s) failed [...]" when the kind falls back.
    assert f"{type_name}: {words}" in details, details
    assert len(details) < 300
    assert not leaks(details), details

    record = await evidence_of(site, correlation_id)
    text = json.dumps(record, ensure_ascii=False)
    assert not leaks(text), (leaks(text), text[:2000])
    assert record["outcome"]["code"] == status.name
    attempts = record["routing"]["attempts"]
    assert attempts, "the failed attempt is in the evidence"
    assert f"{type_name}: {words}" in record["outcome"]["message"]
    # A stream that failed after its first chunk had an "ok" attempt: "mid-stream", and usage read
    # after the text (all but Gemini, whose first event carries a usage snapshot).
    late = behaviour == "mid-stream" or (
        behaviour == "negative-usage" and rpc == "InferStream" and type_name != "gemini"
    )
    if not late:
        assert attempts[0]["error"].startswith(f"{type_name}: {words}")

    # Operators keep the detail, redacted; no log line carries the credential or a forged line.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    found = [name for name, form in echo_forms(CREDENTIAL).items() if form in logged]
    assert not found, found
    assert CREDENTIAL[8:-4].lower() not in logged.lower()
    assert "\r" not in logged
    assert "\x1b" not in logged


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("type_name", TYPES)
async def test_text_no_utf8_encoder_can_write_is_served_with_a_replacement_character(
    site: Site, type_name: str, rpc: str
) -> None:
    """A lone surrogate escape is valid JSON but no character: kept, neither protobuf nor
    the HTTP door's JSON can write the answer (the caller got INTERNAL, or UNKNOWN mid-stream)."""
    correlation_id = f"cid-{alias(type_name, 'lone-surrogate', rpc)}"
    answer = await call(site, rpc, alias(type_name, "lone-surrogate", rpc), correlation_id)
    if rpc == "Infer":
        text = "".join(p.text for p in answer.message.content)
    else:
        text = "".join(e.delta.text for e in answer if e.HasField("delta"))
        assert answer[-1].HasField("end")
    assert text == "Hel\ufffdlo!"
    record = await evidence_of(site, correlation_id)
    assert record["outcome"]["code"] == "OK"


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("type_name", TYPES)
async def test_a_model_missing_upstream_falls_over_to_the_models_other_deployment(
    site: Site, type_name: str, rpc: str
) -> None:
    correlation_id = f"cid-pair-{type_name}-{rpc}".lower()
    before = (site.hostile[type_name].calls.get("not-found", 0), site.healthy[type_name].calls.get("ok", 0))

    answer = await call(site, rpc, alias(type_name, "pair", rpc), correlation_id)

    after = (site.hostile[type_name].calls.get("not-found", 0), site.healthy[type_name].calls.get("ok", 0))
    assert after == (before[0] + 1, before[1] + 1), "one 404 from the first deployment, then the second"
    if rpc == "Infer":
        assert [p.text for p in answer.message.content] == ["Hello!"]
        attempts = [(a.deployment, a.outcome) for a in answer.routing.attempts]
    else:
        text = "".join(e.delta.text for e in answer if e.HasField("delta"))
        assert text == "Hello!"
        assert answer[-1].HasField("end")
        attempts = None
    record = await evidence_of(site, correlation_id)
    served = [(a["deployment"], a["outcome"]) for a in record["routing"]["attempts"]]
    first, second = f"d-pair-404-{type_name}-{rpc}".lower(), f"d-pair-ok-{type_name}-{rpc}".lower()
    assert served == [(first, "model_not_found"), (second, "ok")]
    if attempts is not None:
        assert attempts == served
    assert record["routing"]["served_by"]["deployment"] == second
    assert record["outcome"]["code"] == "OK"
    assert not leaks(json.dumps(record, ensure_ascii=False))


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("behaviour", sorted(STALLS))
@pytest.mark.parametrize("type_name", TYPES)
async def test_a_stalling_upstream_moves_traffic_to_the_healthy_deployment(
    site: Site, type_name: str, behaviour: str, rpc: str
) -> None:
    model = alias(type_name, f"stall-{behaviour}", rpc)
    stalling = f"d-stall-{behaviour}-{type_name}-{rpc}".lower()
    healthy = f"d-stall-ok-{behaviour}-{type_name}-{rpc}".lower()
    first_cid = f"cid-stall-1-{type_name}-{behaviour}-{rpc}".lower()

    await call(site, rpc, model, first_cid)

    record = await evidence_of(site, first_cid)
    served = [(a["deployment"], a["outcome"]) for a in record["routing"]["attempts"]]
    assert served == [(stalling, STALLS[behaviour]), (healthy, "ok")]
    assert record["outcome"]["code"] == "OK"
    assert not leaks(json.dumps(record, ensure_ascii=False))
    if behaviour.startswith("retry-after-"):
        # The next request goes straight to the healthy deployment: the other waits out
        # its Retry-After, capped by the node (a year would park it for every tenant).
        second_cid = f"cid-stall-2-{type_name}-{behaviour}-{rpc}".lower()
        await call(site, rpc, model, second_cid)
        again = await evidence_of(site, second_cid)
        assert [a["deployment"] for a in again["routing"]["attempts"]] == [healthy]
        ((label, why),) = again["routing"]["deferred"]
        assert label == f"{model}@stalling-{type_name}"
        seconds = float(why.removeprefix("Retry-After for ").removesuffix(" s"))
        assert 0 < seconds <= MAX_RETRY_AFTER_S, why
