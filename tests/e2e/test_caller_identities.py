"""Caller identities end to end: JWT issuers and mTLS mappings managed through the Admin API
and the CLI, validated with precise errors, published in a signed snapshot and honoured
(then forgotten, once removed) by a connected node."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.e2e.conftest import NodeFactory
from tests.fixtures.jwks import AUDIENCE, ISSUER, TestIdp
from tests.fixtures.postgres import RunningControlPlane

BILLING = "spiffe://example.test/team/billing"


async def _seed(admin: Admin, simulator: Simulator) -> None:
    for tenant in ("acme", "other"):
        await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=tenant))
    await admin.CreateProvider(
        admin_pb2.CreateProviderRequest(
            provider=admin_pb2.Provider(name="sim", type="simulated", base_url=f"{simulator.base_url}/v1")
        )
    )
    await admin.CreateModel(
        admin_pb2.CreateModelRequest(
            model=admin_pb2.Model(
                alias="alpha",
                capabilities=[common_pb2.CAPABILITY_CHAT],
                deployments=[admin_pb2.Deployment(provider="sim", upstream_model="alpha-upstream")],
            )
        )
    )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document="default_model: alpha"))


def _issuer(idp: TestIdp, **fields: object) -> snapshot_pb2.JwtIssuer:
    values: dict[str, object] = {
        "issuer": idp.issuer,
        "audiences": [AUDIENCE],
        "algorithms": ["ES256", "RS256"],
        "jwks_json": idp.jwks(),
    }
    values.update(fields)
    return snapshot_pb2.JwtIssuer(**values)  # type: ignore[arg-type]


async def _refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


async def _infer(node_address: str, token: str) -> infer_pb2.InferResponse:
    request = infer_pb2.InferRequest()
    request.messages.add(role=infer_pb2.ROLE_USER).content.add(text="hi")
    async with grpc.aio.insecure_channel(node_address) as channel:
        return await infer_pb2_grpc.InferServiceStub(channel).Infer(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=10
        )


async def test_an_issuer_added_through_the_admin_api_is_honoured_by_a_node_until_removed(
    admin: Admin, simulator: Simulator, connected_node: NodeFactory
) -> None:
    await _seed(admin, simulator)
    node = await connected_node("ident-node")
    idp = TestIdp()
    added = await admin.AddJwtIssuer(admin_pb2.AddJwtIssuerRequest(tenant="acme", issuer=_issuer(idp)))
    assert sorted(added.key_ids) == ["ec-1", "rsa-1"]
    assert added.issuer.subject_claim == "sub"
    mapping = await admin.AddMtlsMapping(
        admin_pb2.AddMtlsMappingRequest(tenant="acme", mapping=snapshot_pb2.MtlsMapping(uri=BILLING))
    )
    await node.store.wait_for_version(mapping.snapshot_version, timeout=15)
    identities = node.store.require().config.identities
    assert set(identities.issuers) == {ISSUER}
    assert identities.exact[BILLING].tenant_id == mapping.tenant_id

    reply = await _infer(node.address, idp.token())
    assert reply.model == "alpha"

    listed = await admin.ListJwtIssuers(admin_pb2.ListJwtIssuersRequest(tenant="acme"))
    assert [i.id for i in listed.issuers] == [added.id]
    assert not (await admin.ListJwtIssuers(admin_pb2.ListJwtIssuersRequest(tenant="other"))).issuers
    assert [
        m.mapping.uri for m in (await admin.ListMtlsMappings(admin_pb2.ListMtlsMappingsRequest())).mappings
    ] == [BILLING]

    removed = await admin.RemoveJwtIssuer(admin_pb2.RemoveJwtIssuerRequest(id=added.id))
    await node.store.wait_for_version(removed.snapshot_version, timeout=15)
    code, message = await _refused(_infer(node.address, idp.token()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert message.startswith("authorization: invalid credentials")
    removed = await admin.RemoveMtlsMapping(admin_pb2.RemoveMtlsMappingRequest(id=mapping.id))
    assert removed.snapshot_version > mapping.snapshot_version
    code, _ = await _refused(admin.RemoveMtlsMapping(admin_pb2.RemoveMtlsMappingRequest(id=mapping.id)))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_bad_identities_are_refused_naming_the_field_and_nothing_is_published(
    admin: Admin, simulator: Simulator
) -> None:
    await _seed(admin, simulator)
    idp = TestIdp()
    before = await admin.latest_version()
    small = RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key())
    cases = {
        "issuer.jwks_json": _issuer(idp, jwks_json="{not json"),
        "issuer.jwks_json.keys[0].n": _issuer(
            idp, algorithms=["RS256"], jwks_json=json.dumps({"keys": [json.loads(small) | {"kid": "k"}]})
        ),
        "issuer.algorithms[1]": _issuer(idp, algorithms=["ES256", "none"]),
        "issuer.algorithms[0]": _issuer(idp, algorithms=["HS256"]),
        "issuer.audiences": _issuer(idp, audiences=[]),
    }
    for field, issuer in cases.items():
        code, message = await _refused(
            admin.AddJwtIssuer(admin_pb2.AddJwtIssuerRequest(tenant="acme", issuer=issuer))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert message.startswith(f"{field}: "), (field, message)
    # The JWKS is bounded before anything parses it.
    huge = _issuer(idp, jwks_json=" " * 70_000)
    code, message = await _refused(
        admin.AddJwtIssuer(admin_pb2.AddJwtIssuerRequest(tenant="acme", issuer=huge))
    )
    assert (code, message.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "issuer.jwks_json")
    assert await admin.latest_version() == before

    await admin.AddJwtIssuer(admin_pb2.AddJwtIssuerRequest(tenant="acme", issuer=_issuer(idp)))
    code, message = await _refused(
        admin.AddJwtIssuer(admin_pb2.AddJwtIssuerRequest(tenant="other", issuer=_issuer(idp)))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("issuer.issuer: duplicate issuer")
    code, _ = await _refused(
        admin.AddJwtIssuer(
            admin_pb2.AddJwtIssuerRequest(tenant="nope", issuer=_issuer(TestIdp("https://x.test")))
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND

    for uri, field in (("billing", "mapping.uri"), ("", "mapping.uri")):
        code, message = await _refused(
            admin.AddMtlsMapping(
                admin_pb2.AddMtlsMappingRequest(tenant="acme", mapping=snapshot_pb2.MtlsMapping(uri=uri))
            )
        )
        assert (code, message.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, field), message
    ok = snapshot_pb2.MtlsMapping(uri=BILLING)
    await admin.AddMtlsMapping(admin_pb2.AddMtlsMappingRequest(tenant="acme", mapping=ok))
    code, message = await _refused(
        admin.AddMtlsMapping(admin_pb2.AddMtlsMappingRequest(tenant="other", mapping=ok))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("mapping.uri: duplicate mapping")


async def _signalbox(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_adds_lists_and_removes_identities(
    control_plane: RunningControlPlane, admin: Admin, tmp_path: Path
) -> None:
    env = {"SIGNALBOX_ADMIN_TARGET": control_plane.address, "SIGNALBOX_ADMIN_TOKEN": control_plane.token}
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(TestIdp().jwks())
    code, out, err = await _signalbox(
        "admin", "--json", "identity", "jwt", "add", "--tenant", "acme", "--issuer", ISSUER,
        "--audience", AUDIENCE, "--algorithm", "ES256", "--algorithm", "RS256", "--jwks", str(jwks),
        "--tier-claim", "plan", "--metadata-claim", "team=grp", env=env,
    )  # fmt: skip
    assert code == 0, err
    issuer_id = json.loads(out)["id"]
    code, out, err = await _signalbox(
        "admin", "identity", "mtls", "add", "--tenant", "acme", "--uri", "spiffe://example.test/ops/", "--prefix",
        env=env,
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[1].split()[2:4] == ["spiffe://example.test/ops/", "prefix"]
    code, out, err = await _signalbox("admin", "identity", "jwt", "list", "--tenant", "acme", env=env)
    assert code == 0, err
    header, row = out.strip().splitlines()
    assert header.split()[:3] == ["ID", "TENANT", "ISSUER"]
    assert row.split()[0] == issuer_id
    assert "ec-1,rsa-1" in row
    code, _, err = await _signalbox(
        "admin", "identity", "jwt", "add", "--tenant", "acme", "--issuer", "https://other.test",
        "--audience", AUDIENCE, "--algorithm", "none", "--jwks", str(jwks), env=env,
    )  # fmt: skip
    assert code != 0
    assert "INVALID_ARGUMENT" in err
    assert "issuer.algorithms[0]: 'none' is never allowed" in err
    code, _, err = await _signalbox("admin", "identity", "jwt", "remove", issuer_id, env=env)
    assert code == 0, err
    assert not (await admin.ListJwtIssuers(admin_pb2.ListJwtIssuersRequest())).issuers
