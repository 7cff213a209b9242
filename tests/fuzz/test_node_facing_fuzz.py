"""Property-based fuzzing of the control plane's node-facing services, over the real node port.

A node with a valid certificate is still untrusted: ``node-f`` (``node_fleet``) sends
Lease, Ship, Sync and Renew with hostile values (numbers at and past every bound, NUL and
control characters, huge strings and bytes, ids of other tenants and of ``node-g``,
records that do not parse or do not continue the chain, replays, checkpoints that do not
verify), and anyone sends Enroll on the admin port, and bytes that are no protobuf at all
to every method. For every one: a defined status with a bounded message naming the field
or the rule (``answer_ok``), nothing written by a refusal (quota rows, evidence rows and
certificates counted before and after), the database consistent with what was answered,
and a legitimate call right after still served.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.identity.ca import NodeCertificateSpec
from dataplane.evidence.records import seal
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import (
    identity_pb2,
    identity_pb2_grpc,
    quota_pb2,
    quota_pb2_grpc,
    snapshot_pb2,
    sync_pb2,
    sync_pb2_grpc,
)
from signalbox.api.evidence.v1 import evidence_pb2
from signalbox.tls import ClientTls, aio_channel
from tests.fuzz.conftest import NODE_FACING_EXAMPLES
from tests.fuzz.node_fleet import (
    CSRS,
    FUZZER,
    OTHER,
    TIMEOUT,
    Fleet,
    answer_ok,
    batch_error_ok,
    call_status,
    csrs,
    enum_values,
    fleet,
    hashes_,
    odd_text,
    record,
    sent_strings,
    uint64,
)

__all__ = ["fleet"]  # the fixture, used by name

# ---- Lease ----

_ids = st.sampled_from(["tenant", "key", "other", "unknown", "upper", "braces"]) | odd_text


def _id(fleet: Fleet, which: str) -> str:
    return {
        "tenant": fleet.tenant_id,
        "key": fleet.key_id,
        "other": fleet.other_tenant_id,
        "unknown": "0" * 8 + "-0000-4000-8000-" + "0" * 12,
        "upper": fleet.tenant_id.upper(),
        "braces": "{" + fleet.tenant_id + "}",
    }.get(which, which)


_asks = st.lists(
    st.tuples(
        _ids,
        st.sampled_from(["", "key"]) | _ids,
        enum_values,
        uint64,
        uint64,
        st.sampled_from(["", "day", "month"]) | odd_text,
        st.floats(),
        uint64,
    ),
    max_size=5,
)
_holders = st.one_of(
    st.sampled_from(
        ["", f"{FUZZER}/0", f"{FUZZER}/63", f"{FUZZER}/64", f"{FUZZER}/007", f"{OTHER}/0", FUZZER]
    ),
    st.builds(lambda s: f"{FUZZER}/{s}", odd_text),
    odd_text,
)


async def _quota_state(fleet: Fleet) -> list[tuple[Any, ...]]:
    return await fleet.rows('SELECT scope, "window", level, used, holders FROM quota_state ORDER BY 1, 2')


async def _lease(fleet: Fleet, request: quota_pb2.LeaseRequest) -> tuple[grpc.StatusCode, Any]:
    return await call_status(quota_pb2_grpc.QuotaServiceStub(fleet.channel).Lease(request, timeout=TIMEOUT))


@settings(max_examples=NODE_FACING_EXAMPLES)
@given(asks=_asks, holder=_holders, last=st.booleans(), many=st.sampled_from([0, 0, 0, 4097]))
async def test_any_lease_gets_a_defined_answer_and_a_refusal_writes_nothing(
    fleet: Fleet, asks: list[tuple[Any, ...]], holder: str, last: bool, many: int
) -> None:
    windows = {"day": "", "month": ""}
    request = quota_pb2.LeaseRequest(holder=holder, last=last)
    for tenant, key, kind, want, returned, window, demand, overspent in asks:
        request.asks.add(
            scope=quota_pb2.QuotaScope(tenant_id=_id(fleet, tenant), api_key_id=_id(fleet, key), kind=kind),
            want=want,
            returned=returned,
            returned_window=windows.get(window, window),
            demand_per_second=demand,
            overspent=overspent,
        )
    if many:
        request.asks.extend([quota_pb2.QuotaAsk()] * many)
    before = await _quota_state(fleet)
    code, answer = await _lease(fleet, request)
    if code == grpc.StatusCode.OK:
        assert len(answer.grants) == len(request.asks)
        for ask, grant in zip(request.asks, answer.grants, strict=True):
            assert grant.granted <= ask.want
            assert math.isfinite(grant.refill_seconds)
            assert grant.refill_seconds >= 0
    else:
        answer_ok(code, answer, sent_strings(request))
        assert await _quota_state(fleet) == before
    # A legitimate lease right after is served.
    legit = quota_pb2.LeaseRequest(
        holder=f"{FUZZER}/1",
        asks=[
            quota_pb2.QuotaAsk(
                scope=quota_pb2.QuotaScope(tenant_id=fleet.tenant_id, kind=quota_pb2.QUOTA_KIND_BUDGET_DAY),
                want=1,
            )
        ],
    )
    code, answer = await _lease(fleet, legit)
    assert code == grpc.StatusCode.OK, answer
    assert answer.grants[0].limit == 10**12


# ---- Ship ----

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | odd_text,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(odd_text, inner, max_size=3)),
    max_leaves=8,
)
_FIELDS = [
    "ts",
    "record_id",
    "seq",
    "prev_hash",
    "node_id",
    "chain_id",
    "correlation_id",
    "tenant_id",
    "api_key_id",
    "routing",
    "outcome",
    "cost",
    "x\x00y",
]
_overrides = st.dictionaries(
    st.sampled_from(_FIELDS),
    st.one_of(
        _json,
        st.sampled_from([2**63, 2**64, -1, 0, 1e300, 946684799, 253370764800, "", "\x00"]),
        st.builds(lambda n: {"total_nanos": n}, st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)),
        st.builds(lambda m: {"served_by": {"model": m}}, odd_text),
        st.builds(lambda c: {"code": c}, odd_text),
    ),
    max_size=3,
)
_line = st.one_of(
    st.tuples(st.just("next"), _overrides),
    st.tuples(st.just("next"), st.just({})),
    st.tuples(st.sampled_from(["skip", "replay", "tamper", "again", "other-node"]), st.just({})),
    st.tuples(st.just("raw"), st.binary(max_size=100) | st.sampled_from([b"", b"\n", b"{}", b"x" * 70_000])),
    st.tuples(st.just("json"), _json),
)
_note = st.one_of(
    st.tuples(st.sampled_from(["head", "zero", "ahead", "wrong-root"]), st.sampled_from([None])),
    st.tuples(st.just("head"), st.builds(lambda a, b: f"\u2014 {a} {b}", odd_text, odd_text)),
    st.tuples(st.just("text"), odd_text),
)
_chains = st.sampled_from([f"{FUZZER}/0", f"{FUZZER}/0", f"{FUZZER}/1", f"{OTHER}/0"]) | st.builds(
    lambda s: f"{FUZZER}/{s}", odd_text
)


async def _batch(
    fleet: Fleet, chain_id: str, lines: list[tuple[str, Any]], notes: list[tuple[str, Any]]
) -> Any:
    seq, prev = await fleet.head(chain_id)
    head = seq
    stored = await fleet.stored_lines(chain_id)
    records: list[bytes] = []
    for kind, value in lines:
        if kind == "next":
            line = seal(record(chain_id, seq + 1, prev, value))
            # Assumed taken: a batch is refused from its first bad record on, so what follows
            # a refused one is never looked at.
            seq, prev = seq + 1, json.loads(line)["hash"]
        elif kind == "skip":
            line = seal(record(chain_id, seq + 2, prev))
        elif kind == "replay" and stored:
            line = stored[-1]
        elif kind == "tamper" and stored:
            line = seal({**json.loads(stored[0]), "tenant_id": "forged"})
        elif kind == "again" and records:
            line = records[-1]
        elif kind == "other-node":
            line = seal(record(f"{OTHER}/0", seq + 1, prev))
        elif kind == "json":
            line = seal(value) if isinstance(value, dict) else json.dumps(value).encode()
        else:
            line = value if isinstance(value, bytes) else b"{"
        records.append(line)
    checkpoints = []
    for kind, extra in notes:
        if kind == "text":
            checkpoints.append(extra)
            continue
        size = {"head": head, "zero": 0, "ahead": head + 5, "wrong-root": head}[kind]
        root = await fleet.root(chain_id, size) if kind != "wrong-root" else b"\x01" * 32
        try:
            note = fleet.checkpoint(chain_id, size, root)
        except ValueError:  # a chain id no checkpoint can name
            note = "x"
        checkpoints.append(note + (f"{extra}\n" if extra else ""))
    return evidence_pb2.ShipBatch(chain_id=chain_id, records=records, checkpoints=checkpoints)


@settings(max_examples=NODE_FACING_EXAMPLES)
@given(
    chain_id=_chains,
    lines=st.lists(_line, max_size=5),
    notes=st.lists(_note, max_size=2),
)
async def test_any_batch_gets_a_defined_answer_and_the_store_matches_it(
    fleet: Fleet, chain_id: str, lines: list[tuple[str, Any]], notes: list[tuple[str, Any]]
) -> None:
    batch = await _batch(fleet, chain_id, lines, notes)
    rows, checkpoints = await fleet.count("evidence_records"), await fleet.count("evidence_checkpoints")
    chains = await fleet.count("evidence_chains")
    code, answer = await fleet.ship(batch)
    if code != grpc.StatusCode.OK:
        answer_ok(code, answer, sent_strings(batch))
        assert await fleet.count("evidence_records") == rows
        assert await fleet.count("evidence_chains") == chains
    else:
        if answer.HasField("error"):
            batch_error_ok(answer.error)
        assert await fleet.count("evidence_records") == rows + answer.stored
        assert answer.stored + answer.duplicates <= len(batch.records)
        # Gap-free: the head is the number of the chain's records.
        assert answer.head_seq == (await fleet.head(batch.chain_id))[0]
        assert await fleet.count("evidence_checkpoints") <= checkpoints + answer.checkpoints + len(
            batch.checkpoints
        )
    await fleet.ship_next()


# ---- Sync ----

_hellos = st.builds(
    sync_pb2.Hello,
    node_id=st.sampled_from([FUZZER, FUZZER, OTHER, ""]) | odd_text,
    software_version=odd_text,
    mode=st.sampled_from([common_pb2.DEPLOYMENT_MODE_CLOUD, 0]) | enum_values,
    scope=st.builds(snapshot_pb2.Scope, node_group=st.sampled_from(["", "default"]) | odd_text, site=odd_text)
    | st.just(snapshot_pb2.Scope()),
    applied_version=st.sampled_from([0, 1, 2]) | uint64,
    applied_hash=hashes_,
    delivery_failure=st.builds(sync_pb2.DeliveryFailure, reason=odd_text, message_bytes=uint64),
    accepts_delta=st.booleans(),
)
_answers = st.one_of(
    st.builds(
        lambda v, h: sync_pb2.NodeMessage(ack=sync_pb2.Ack(version=v, payload_sha256=h)), uint64, hashes_
    ),
    st.builds(
        lambda v, h, r: sync_pb2.NodeMessage(nack=sync_pb2.Nack(version=v, payload_sha256=h, reason=r)),
        uint64,
        hashes_,
        odd_text,
    ),
    st.builds(lambda v: sync_pb2.NodeMessage(heartbeat=sync_pb2.Heartbeat(applied_version=v)), uint64),
    st.builds(
        lambda v, r: sync_pb2.NodeMessage(resync=sync_pb2.Resync(version=v, reason=r)), uint64, odd_text
    ),
    st.builds(lambda h: sync_pb2.NodeMessage(hello=h), _hellos),
    st.just(sync_pb2.NodeMessage()),
)


CLIENT_CORE_RACE = (grpc.StatusCode.INTERNAL, "Internal error from Core")
"""What this test's grpc client reported, once in thousands of streams, for a stream the
server ended (a first message that is no Hello) while the client was still writing: the
server logged its refusal, no error; our servicers' INTERNAL says "internal error"."""


async def _sync(fleet: Fleet, messages: list[sync_pb2.NodeMessage]) -> tuple[grpc.StatusCode, str, list[Any]]:
    """Send ``messages`` and close; (how the stream ended, its details, what came)."""

    async def requests() -> AsyncIterator[sync_pb2.NodeMessage]:
        for message in messages:
            yield message

    call = sync_pb2_grpc.ConfigSyncServiceStub(fleet.channel).Sync(requests(), timeout=TIMEOUT)
    received = []
    try:
        async for message in call:
            received.append(message)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", received
    return grpc.StatusCode.OK, "", received


async def _served_version(fleet: Fleet) -> int:
    rows = await fleet.rows("SELECT coalesce(max(version), 0) FROM snapshots")
    return int(rows[0][0])


@settings(max_examples=NODE_FACING_EXAMPLES)
@given(hello=st.none() | _hellos, answers=st.lists(_answers, max_size=4))
async def test_any_sync_stream_gets_a_defined_end_and_records_only_what_was_published(
    fleet: Fleet, hello: sync_pb2.Hello | None, answers: list[sync_pb2.NodeMessage]
) -> None:
    messages = ([sync_pb2.NodeMessage(hello=hello)] if hello is not None else []) + answers
    code, details, _ = await _sync(fleet, messages)
    if (code, details) == CLIENT_CORE_RACE:
        code = grpc.StatusCode.OK  # the server's answer was lost to our own client (see above)
    if code != grpc.StatusCode.OK:
        sent = [s for m in messages for s in sent_strings(m)]
        answer_ok(code, details, sent)
    published = await _served_version(fleet)
    # What a Hello or a NACK claims is shown as the node's claim; an ACK is recorded only of
    # a snapshot that was published.
    for acked, reason, version in await fleet.rows(
        "SELECT last_ack_version, last_nack_reason, software_version FROM nodes"
    ):
        assert (acked or 0) <= published, (acked, published)
        assert len(reason or "") <= 1100
        assert len(version or "") <= 1100
        assert not any(ord(c) < 0x20 for c in (reason or "") + (version or ""))
    # A legitimate stream right after gets its snapshot.
    code, details, received = await _sync(
        fleet,
        [
            sync_pb2.NodeMessage(
                hello=sync_pb2.Hello(
                    node_id=FUZZER, software_version="1", mode=common_pb2.DEPLOYMENT_MODE_CLOUD
                )
            )
        ],
    )
    assert (code, [m.WhichOneof("message") for m in received][:1]) == (grpc.StatusCode.OK, ["envelope"]), (
        details
    )


# ---- Enroll and Renew ----

_tokens = st.sampled_from(["fresh", "fresh", "sbx_enroll_x_y", ""]) | odd_text


async def _certificates(fleet: Fleet) -> int:
    return await fleet.count("node_certificates")


@settings(max_examples=NODE_FACING_EXAMPLES)
@given(
    token=_tokens,
    csr=csrs,
    node_id=st.sampled_from(["node-new", FUZZER, OTHER]) | odd_text,
    version=odd_text,
)
async def test_any_enrollment_gets_a_defined_answer_and_a_refusal_issues_nothing(
    fleet: Fleet, token: str, csr: str, node_id: str, version: str
) -> None:
    if token == "fresh":
        token = await fleet.cp.enroll_token()
    before = await _certificates(fleet)
    request = identity_pb2.EnrollRequest(token=token, csr_pem=csr, node_id=node_id, software_version=version)
    async with grpc.aio.insecure_channel(fleet.cp.address) as channel:
        stub = identity_pb2_grpc.NodeEnrollmentServiceStub(channel)
        code, answer = await call_status(stub.Enroll(request, timeout=TIMEOUT))
    if code == grpc.StatusCode.OK:
        assert await _certificates(fleet) == before + 1
    else:
        answer_ok(code, answer, sent_strings(request))
        if token.startswith("sbx_enroll_") and len(token) > 20:
            assert token.rsplit("_", 1)[-1] not in answer
        assert await _certificates(fleet) == before
    await fleet.ship_next()


@settings(max_examples=NODE_FACING_EXAMPLES)
@given(csr=csrs)
async def test_any_renewal_gets_a_defined_answer_and_a_refusal_issues_nothing(fleet: Fleet, csr: str) -> None:
    before = await _certificates(fleet)
    request = identity_pb2.RenewRequest(csr_pem=csr)
    stub = identity_pb2_grpc.NodeIdentityServiceStub(fleet.channel)
    code, answer = await call_status(stub.Renew(request, timeout=TIMEOUT))
    if code == grpc.StatusCode.OK:
        assert csr == CSRS["p256"]
        assert await _certificates(fleet) == before + 1
    else:
        answer_ok(code, answer, sent_strings(request))
        assert await _certificates(fleet) == before
    await fleet.ship_next()


# ---- bytes that are no protobuf message ----

_METHODS = {
    "/signalbox.api.config.v1.QuotaService/Lease": (False, quota_pb2.LeaseRequest()),
    "/signalbox.api.config.v1.NodeIdentityService/Renew": (False, identity_pb2.RenewRequest(csr_pem="x")),
    "/signalbox.api.evidence.v1.EvidenceService/Ship": (True, evidence_pb2.ShipBatch(chain_id=f"{FUZZER}/0")),
    "/signalbox.api.config.v1.ConfigSyncService/Sync": (
        True,
        sync_pb2.NodeMessage(hello=sync_pb2.Hello(node_id=FUZZER, mode=1)),
    ),
    "/signalbox.api.config.v1.NodeEnrollmentService/Enroll": (False, identity_pb2.EnrollRequest(token="t")),
}


def _corrupt(valid: bytes, at: int, junk: bytes) -> bytes:
    at = at % (len(valid) + 1)
    return valid[:at] + junk + valid[at:]


@settings(max_examples=NODE_FACING_EXAMPLES)
@given(
    method=st.sampled_from(sorted(_METHODS)),
    data=st.binary(max_size=64) | st.sampled_from([b"\x0a\x03\xff\xfe\xfd", b"\x0a\x10short", b"\xff"]),
    at=st.integers(0, 100),
    first_valid=st.booleans(),
)
async def test_bytes_that_are_no_message_get_a_defined_answer(
    fleet: Fleet, method: str, data: bytes, at: int, first_valid: bool
) -> None:
    streamed, valid = _METHODS[method]
    corrupt = _corrupt(valid.SerializeToString(), at, data)
    if method.endswith("/Enroll"):
        async with grpc.aio.insecure_channel(fleet.cp.address) as channel:
            unary = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            code, answer = await call_status(unary(corrupt, timeout=TIMEOUT))
    elif not streamed:
        unary = fleet.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        code, answer = await call_status(unary(corrupt, timeout=TIMEOUT))
    else:
        stream = fleet.channel.stream_stream(method, request_serializer=None, response_deserializer=None)
        messages = [valid.SerializeToString(), corrupt] if first_valid else [corrupt]

        async def requests() -> AsyncIterator[bytes]:
            for message in messages:
                yield message

        code, answer = grpc.StatusCode.OK, ""
        try:
            async for _ in stream(requests(), timeout=TIMEOUT):
                pass
        except grpc.aio.AioRpcError as exc:
            code, answer = exc.code(), exc.details() or ""
    if code != grpc.StatusCode.OK:
        answer_ok(code, answer)
    await fleet.ship_next()


# ---- callers who are not (or no longer) a node ----


def _unrecorded(fleet: Fleet, directory: Path) -> ClientTls:
    """A certificate the node CA signed for ``node-f`` that the control plane never issued
    (nothing records it): what a stolen CA signature, or a replica's lost write, would be."""
    key = ec.generate_private_key(ec.SECP256R1())
    assert fleet.cp.cp.identities is not None
    issued = fleet.cp.cp.identities.ca.issue_node(
        NodeCertificateSpec(FUZZER, "default", "cloud"), key.public_key(), timedelta(hours=1)
    )
    directory.mkdir(mode=0o700)
    (directory / "node.crt").write_text(issued.pem)
    (directory / "node.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ClientTls(ca=fleet.tls.ca, cert=directory / "node.crt", key=directory / "node.key")


@pytest.mark.parametrize("who", ["revoked", "unrecorded"])
async def test_a_revoked_or_unrecorded_certificate_is_refused_by_every_node_service(
    fleet: Fleet, private_tmp: Path, who: str
) -> None:
    if who == "revoked":
        assert fleet.cp.cp.identities is not None
        await fleet.cp.cp.identities.revoke(OTHER)
        tls, expected = fleet.other_tls, grpc.StatusCode.PERMISSION_DENIED
    else:
        tls, expected = (
            _unrecorded(fleet, private_tmp / f"unrecorded-{secrets.token_hex(4)}"),
            (grpc.StatusCode.UNAUTHENTICATED),
        )
    rows = await fleet.count("evidence_records") + await fleet.count("quota_state")
    async with aio_channel(fleet.cp.node_address, tls) as channel:
        stranger = Fleet(**{**fleet.__dict__, "channel": channel})
        lease = quota_pb2.LeaseRequest(
            asks=[quota_pb2.QuotaAsk(scope=quota_pb2.QuotaScope(tenant_id=fleet.tenant_id, kind=1), want=5)]
        )
        answers = {
            "Lease": await _lease(stranger, lease),
            "Renew": await call_status(
                identity_pb2_grpc.NodeIdentityServiceStub(channel).Renew(
                    identity_pb2.RenewRequest(csr_pem=CSRS["p256"]), timeout=TIMEOUT
                )
            ),
            "Ship": await stranger.ship(
                evidence_pb2.ShipBatch(
                    chain_id=f"{OTHER}/0", records=[seal(record(f"{OTHER}/0", 1, "0" * 64))]
                )
            ),
            "Sync": (await _sync(stranger, [sync_pb2.NodeMessage(hello=sync_pb2.Hello(node_id=OTHER))]))[:2],
        }
    for method, (code, details) in answers.items():
        assert code == expected, (method, code, details)
        answer_ok(code, details)
    assert await fleet.count("evidence_records") + await fleet.count("quota_state") == rows
    await fleet.ship_next()
