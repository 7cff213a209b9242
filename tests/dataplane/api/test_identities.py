"""Caller identities on a real node over real TLS: a tenant's JWTs and mTLS client certificates.

The node requires client certificates signed by its client CA (``--tls-client-ca``). A JWT
caller presents one too (without a mapped SAN): the bearer token, when sent, is the identity.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.tls_front import CERTIFICATE_REQUIRED
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.tls import ClientTls, ServerTls, aio_channel
from tests.dataplane.conftest import NodeFactory, chat, envelope, snapshot
from tests.fixtures.certs import Pem, TestCA
from tests.fixtures.jwks import AUDIENCE, ISSUER, TestIdp, b64, unsigned
from tests.helpers import eventually

BILLING = "spiffe://example.test/team/billing"
OPS_PREFIX = "spiffe://example.test/ops/"

RULES = [
    {"name": "gold", "match": {"tiers": ["gold"]}, "models": ["sim-smart"]},
    {"name": "search-team", "match": {"metadata": {"team": ["search"]}}, "models": ["sim-smart"]},
]


@dataclass
class Site:
    node: DataPlaneNode
    ca: TestCA
    idp: TestIdp
    plain: Pem
    """A client certificate of the CA without a mapped SAN."""
    data_dir: Path

    def tls(self, cert: Pem | None = None) -> ClientTls:
        cert = cert or self.plain
        return ClientTls(ca=self.ca.ca_file, cert=cert.cert, key=cert.key)

    async def infer(self, token: str | None = None, *, cert: Pem | None = None, **fields: Any) -> Any:
        metadata = (("authorization", token),) if token is not None else ()
        async with aio_channel(self.node.address, self.tls(cert)) as channel:
            stub = infer_pb2_grpc.InferServiceStub(channel)
            return await stub.Infer(chat("hi", **fields), metadata=metadata, timeout=10)

    async def refused(self, token: str | None = None, *, cert: Pem | None = None) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.infer(token, cert=cert)
        return caught.value

    def records(self) -> list[dict[str, Any]]:
        return list(read_records(log_path(self.data_dir, "node-test")))


def identities(idp: TestIdp) -> list[snapshot_pb2.TenantIdentity]:
    issuer = snapshot_pb2.JwtIssuer(
        issuer=idp.issuer,
        audiences=[AUDIENCE],
        algorithms=["ES256", "RS256"],
        jwks_json=idp.jwks(),
        leeway_seconds=0,
        subject_claim="sub",
        tier_claim="plan",
        metadata_claims={"team": "grp"},
    )
    return [
        snapshot_pb2.TenantIdentity(id="id-jwt", tenant_id="t-acme", jwt=issuer),
        snapshot_pb2.TenantIdentity(
            id="id-billing", tenant_id="t-acme", mtls=snapshot_pb2.MtlsMapping(uri=BILLING)
        ),
        snapshot_pb2.TenantIdentity(
            id="id-ops", tenant_id="t-acme", mtls=snapshot_pb2.MtlsMapping(uri=OPS_PREFIX, prefix=True)
        ),
    ]


@pytest.fixture
async def site(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> Site:
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("node", server=True)
    node = await start_node(tls=ServerTls(cert=server.cert, key=server.key, client_ca=ca.ca_file))
    idp = TestIdp()
    snap = snapshot(1, simulator.base_url, rules=RULES)
    snap.identities.extend(identities(idp))
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    return Site(node, ca, idp, ca.issue("plain-client", server=False), tmp_path / "node")


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def test_a_valid_jwt_is_served_and_its_identity_tier_and_metadata_reach_routing_and_evidence(
    site: Site,
) -> None:
    token = site.idp.token(plan="gold")
    reply = await site.infer(bearer(token), correlation_id="cid-jwt-gold")
    assert (reply.routing.rule, reply.model) == ("gold", "sim-smart")

    # The claim mapped to metadata routes; the caller's own metadata for that key does not win.
    reply = await site.infer(bearer(site.idp.token(grp="search")), correlation_id="cid-jwt-team")
    assert reply.routing.rule == "search-team"
    spoofed = await site.infer(
        bearer(site.idp.token(grp="billing")), correlation_id="cid-jwt-spoof", metadata={"team": "search"}
    )
    assert spoofed.routing.rule != "search-team"
    # RS256 with the RSA key of the same JWKS.
    assert (await site.infer(bearer(site.idp.token(kid="rsa-1", alg="RS256")))).model == "sim-fast"

    def recorded() -> dict[str, Any]:
        mine = [r for r in site.records() if r["correlation_id"] == "cid-jwt-gold"]
        assert len(mine) == 1
        return mine[0]

    record = await eventually(recorded, message="the JWT caller's evidence record")
    assert record["tenant_id"] == "t-acme"
    assert record["caller"] == {
        "method": "jwt",
        "identity_id": "id-jwt",
        "issuer": ISSUER,
        "subject": "alice@example.test",
    }
    log = log_path(site.data_dir, "node-test").read_text()
    assert token not in log
    assert token.split(".")[2] not in log


async def test_every_bad_jwt_is_unauthenticated_with_one_message_family(site: Site) -> None:
    idp = site.idp
    good = idp.token()
    head, body, sig = good.split(".")
    claims = idp.claims()
    public_pem = idp.rsa.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    hs_header = {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}
    signing_input = unsigned(hs_header, claims).rsplit(".", 1)[0]
    hs256_with_public_key = (
        signing_input + "." + b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    )
    tampered = ".".join((head, b64(json.dumps(claims | {"sub": "mallory"}).encode()), sig))
    other_idp = TestIdp("https://unknown.example.test")
    invalid = "authorization: invalid credentials"
    cases = {
        "expired": (
            bearer(idp.token(exp=1_000_000, iat=999_000, nbf=999_000)),
            "authorization: token expired",
        ),
        "not yet valid": (
            bearer(idp.token(nbf=4_000_000_000)),
            "authorization: token expired or not yet valid",
        ),
        "wrong audience": (bearer(idp.token(aud="someone-else")), invalid),
        "unknown issuer": (bearer(other_idp.token()), invalid),
        "signed by an unknown key under a known issuer": (bearer(TestIdp().token()), invalid),
        "unknown kid": (bearer(idp.token(kid="ec-404")), invalid),
        "alg none": (bearer(unsigned({"alg": "none", "kid": "ec-1"}, claims)), invalid),
        "HS256 with the public key as secret": (bearer(hs256_with_public_key), invalid),
        "alg of another key family": (bearer(idp.token(kid="ec-1", alg="RS256")), invalid),
        "tampered payload": (bearer(tampered), invalid),
        "iat in the future": (bearer(idp.token(iat=4_000_000_000)), invalid),
        "no subject": (bearer(idp.token(sub=None)), invalid),
        "oversized": (bearer(idp.token(pad="x" * 3500)), invalid),
        "malformed header": (bearer("!!!." + body + "." + sig), invalid),
        "truncated": (bearer(good[:-20]), invalid),
        # Not a bearer token: the (unmapped) client certificate is all the caller presents.
        "wrong scheme": (f"Basic {good}", invalid),
    }
    for name, (credential, expected) in cases.items():
        error = await site.refused(credential)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert error.details().startswith(expected), (name, error.details())
        # Nothing of the token comes back.
        assert credential.split(" ", 1)[1][-24:] not in error.details(), name
    # A good token is still served after all that.
    assert (await site.infer(bearer(good))).model == "sim-fast"


async def test_a_mapped_client_certificate_is_served_as_its_tenant(site: Site, tmp_path: Path) -> None:
    billing = site.ca.issue("billing", server=False, uris=(BILLING,))
    reply = await site.infer(cert=billing, correlation_id="cid-mtls")
    assert reply.model == "sim-fast"
    deploy = site.ca.issue("deploy", server=False, uris=(OPS_PREFIX + "deploy",))
    assert (await site.infer(cert=deploy)).model == "sim-fast"

    def recorded() -> dict[str, Any]:
        mine = [r for r in site.records() if r["correlation_id"] == "cid-mtls"]
        assert len(mine) == 1
        return mine[0]

    record = await eventually(recorded, message="the mTLS caller's evidence record")
    assert record["tenant_id"] == "t-acme"
    assert record["caller"] == {"method": "mtls", "identity_id": "id-billing", "subject": BILLING}


async def test_unmapped_self_signed_and_missing_client_certificates_are_refused(
    site: Site, tmp_path: Path
) -> None:
    unmapped = site.ca.issue("stranger", server=False, uris=("spiffe://example.test/team/other",))
    error = await site.refused(cert=unmapped)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details().startswith("authorization: invalid credentials")
    # A SAN under the prefix's parent but not under the prefix itself maps to nothing.
    sibling = site.ca.issue("sibling", server=False, uris=("spiffe://example.test/opsx/deploy",))
    assert (await site.refused(cert=sibling)).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_certificate_the_client_ca_did_not_sign_is_refused_per_call_with_evidence(
    site: Site, tmp_path: Path
) -> None:
    """The TLS handshake finishes whatever the client's certificate; the call is then refused
    UNAUTHENTICATED (not a failed handshake, which callers see as UNAVAILABLE) and recorded.
    A valid bearer token does not rescue a connection with an untrusted certificate."""
    stranger = TestCA(tmp_path / "stranger", name="billing")
    untrusted = {
        "cid-other-ca": stranger.issue("other-ca", server=False, uris=(BILLING,)),
        "cid-self-signed": stranger.pem,  # a self-signed certificate, key and all
        "cid-expired": site.ca.issue("expired", server=False, uris=(BILLING,), expired=True),
        "cid-server-only": site.ca.issue("server-only", server=True),  # not for client auth
    }
    for correlation_id, cert in untrusted.items():
        for token in (None, site.idp.token()):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await site.infer(token, cert=cert, correlation_id=correlation_id)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, correlation_id
            assert refused.value.details().startswith("authorization: invalid credentials"), correlation_id

    # No certificate at all: refused alike, naming what is missing, even with a valid token.
    for token in (None, site.idp.token()):
        metadata = (("authorization", token),) if token else ()
        async with aio_channel(site.node.address, ClientTls(ca=site.ca.ca_file)) as channel:
            stub = infer_pb2_grpc.InferServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await stub.Infer(chat("hi", correlation_id="cid-anonymous"), metadata=metadata, timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert anonymous.value.details().startswith(CERTIFICATE_REQUIRED)

    def recorded() -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in site.records():
            if record["correlation_id"] in (*untrusted, "cid-anonymous"):
                assert record["outcome"]["code"] == "UNAUTHENTICATED", record
                counts[record["correlation_id"]] = counts.get(record["correlation_id"], 0) + 1
        assert counts == {cid: 2 for cid in (*untrusted, "cid-anonymous")}
        return counts

    await eventually(recorded, message="one evidence record per refused call")
    # The node goes on serving trusted callers.
    assert (
        await site.infer(cert=site.ca.issue("billing", server=False, uris=(BILLING,)))
    ).model == "sim-fast"


async def test_a_connection_that_bypasses_the_tls_front_is_refused(site: Site) -> None:
    """The doors behind the front listen on loopback; a local process dialling one directly
    brings no TLS verdict and is refused, whatever credential it sends."""
    fronts = site.node._doors.fronts if site.node._doors is not None else []
    assert fronts, "a node with a client CA listens through a TLS front"
    address = f"127.0.0.1:{fronts[0].backend_port}"
    async with aio_channel(address, ClientTls(insecure=True)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await infer_pb2_grpc.InferServiceStub(channel).Infer(
                chat("hi"), metadata=(("authorization", site.idp.token()),), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details().startswith("authorization: invalid credentials")
