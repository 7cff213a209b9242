"""The secret scan: a full scenario, then every place a secret could leak is searched for
every secret, in every form a leak could take (raw, hex, base64, base64url).

Scenario: admin tokens, API keys (one revoked), providers whose credentials come from an env
var, from a file and sealed to the node group's key, a tenant JWT issuer and JWT calls, served requests, and providers that
echo the node's credential (the Authorization header) in their error bodies, in a dozen forms.

Searched: every log line captured (every logger, DEBUG), every error message returned to a
caller or an admin, every snapshot (the control plane's history, decoded, and the node's
last-known-good), every evidence record (the node's chain and the control plane's store),
every admin listing (every List/Get/Export/Show RPC of the Admin API with a default request),
and every row of every database table, as text."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import tempfile
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from google.protobuf import text_format

from dataplane.evidence.log import log_path
from dataplane.providers.sealing import aad, key_id, public_bytes, seal
from dataplane.snapshot.hash_key import API_KEY_HASH_KEY_FILE, decode_hash_keys
from dataplane.snapshot.lkg import SNAPSHOT_DIR
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.controlplane.conftest import Admin
from tests.dataplane.providers.hostile import HostileUpstream
from tests.e2e.conftest import loopback_node
from tests.fixtures.jwks import AUDIENCE, TestIdp
from tests.fixtures.postgres import RunningControlPlane, sql_rows
from tests.helpers import eventually

TENANT = "acme"
ENV_NAME = "SIGNALBOX_CRED_SCAN_" + secrets.token_hex(4).upper()
ENV_CREDENTIAL = "sk-env-" + secrets.token_urlsafe(24)
FILE_CREDENTIAL = "sk-file-" + secrets.token_urlsafe(24)
SEALED_CREDENTIAL = "sk-sealed-" + secrets.token_urlsafe(24)
SEALING_KEY = X25519PrivateKey.generate()
POLICY = """
default_model: ok-env
allowed_models: [ok-env, ok-file, ok-sealed, echo-env, echo-file, echo-sealed, echo-in-band]
retry: {max_attempts: 1, attempts_per_deployment: 1}
"""
# alias -> (provider, upstream model: the hostile upstream's behaviour)
MODELS = {
    "ok-env": ("env-provider", "ok"),
    "ok-file": ("file-provider", "ok"),
    "echo-env": ("env-provider", "echo-401"),
    "echo-file": ("file-provider", "echo-500"),
    "echo-in-band": ("env-provider", "in-band"),
    "ok-sealed": ("sealed-provider", "ok"),
    "echo-sealed": ("sealed-provider", "echo-401"),
}


def _forms(secret: bytes) -> dict[str, bytes]:
    return {
        "raw": secret,
        "hex": secret.hex().encode(),
        "base64": base64.b64encode(secret).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(secret).rstrip(b"="),
    }


class Haystack:
    """Everything collected, by where it came from."""

    def __init__(self) -> None:
        self.places: dict[str, list[bytes]] = {}

    def add(self, place: str, value: str | bytes) -> None:
        self.places.setdefault(place, []).append(
            value.encode("utf-8", "replace") if isinstance(value, str) else value
        )

    def findings(self, named_secrets: dict[str, bytes]) -> list[str]:
        found = []
        for place, values in self.places.items():
            for value in values:
                for name, secret in named_secrets.items():
                    for form_name, form in _forms(secret).items():
                        if form in value:
                            found.append(f"{name} ({form_name}) in {place}: ...{_around(value, form)}...")
        return found


def _around(value: bytes, form: bytes) -> str:
    at = value.index(form)
    return value[max(0, at - 60) : at].decode("utf-8", "replace")


async def _seed(admin: Admin, hostile: HostileUpstream) -> None:
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=TENANT))
    public = public_bytes(SEALING_KEY)
    await admin.UpdateNodeGroup(admin_pb2.UpdateNodeGroupRequest(name="default", sealing_public_key=public))
    sealed = admin_pb2.Provider(
        name="sealed-provider", type="openai_compatible", base_url=f"{hostile.base_url}/v1"
    )
    created = await admin.CreateProvider(admin_pb2.CreateProviderRequest(provider=sealed))
    # Sealed as the admin CLI does, on the admin's side.
    sealed.credential.sealed.CopyFrom(
        snapshot_pb2.SealedSecret(
            node_group="default",
            key_id=key_id(public),
            ciphertext=seal(public, SEALED_CREDENTIAL.encode(), aad("default", created.id)),
        )
    )
    await admin.UpdateProvider(admin_pb2.UpdateProviderRequest(provider=sealed))
    for name, credential in (
        ("env-provider", snapshot_pb2.SecretRef(env=ENV_NAME)),
        ("file-provider", snapshot_pb2.SecretRef(file="upstream.key")),
    ):
        await admin.CreateProvider(
            admin_pb2.CreateProviderRequest(
                provider=admin_pb2.Provider(
                    name=name,
                    type="openai_compatible",
                    base_url=f"{hostile.base_url}/v1",
                    credential=credential,
                    timeout_ms=10_000,
                )
            )
        )
    for alias, (provider, upstream) in MODELS.items():
        await admin.CreateModel(
            admin_pb2.CreateModelRequest(
                model=admin_pb2.Model(
                    alias=alias,
                    capabilities=[common_pb2.CAPABILITY_CHAT],
                    deployments=[admin_pb2.Deployment(provider=provider, upstream_model=upstream)],
                )
            )
        )
    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=TENANT, document=POLICY))


async def _infer(address: str, token: str, model: str, errors: Haystack) -> bool:
    request = infer_pb2.InferRequest(model=model)
    request.messages.add(role=infer_pb2.ROLE_USER).content.add(text="hello")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        try:
            reply = await stub.Infer(request, metadata=(("authorization", f"Bearer {token}"),), timeout=15)
        except grpc.aio.AioRpcError as exc:
            errors.add(f"Infer({model}) error", f"{exc.code()} {exc.details()} {exc.trailing_metadata()}")
            return False
    errors.add(f"Infer({model}) reply", text_format.MessageToString(reply))
    return True


async def _every_listing(admin: Admin, found: Haystack) -> int:
    """Every read-only Admin RPC, with a default request (a missing argument is an error
    message, collected too)."""
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    called = 0
    for method in service.methods:
        if not method.name.startswith(("List", "Get", "Export", "Show", "Explain")):
            continue
        if method.client_streaming or method.server_streaming:
            continue
        request_class: Any = getattr(admin_pb2, method.input_type.name)
        try:
            reply = await getattr(admin, method.name)(request_class())
        except grpc.aio.AioRpcError as exc:
            found.add(f"admin {method.name} error", f"{exc.code()} {exc.details()}")
        else:
            found.add(f"admin {method.name}", text_format.MessageToString(reply))
            found.add(f"admin {method.name} (wire)", reply.SerializeToString())
        called += 1
    return called


async def _sql(database_url: str, sql: str) -> list[Any]:
    """Rows of ``sql``, in a thread: the control plane under test shares this event loop."""
    return await asyncio.to_thread(sql_rows, database_url, sql)


async def _tables(database_url: str) -> list[str]:
    rows = await _sql(
        database_url,
        "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    return [str(r[0]) for r in rows]


async def test_no_secret_anywhere_after_a_full_scenario(
    admin: Admin,
    control_plane: RunningControlPlane,
    private_tmp: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    found = Haystack()
    hostile = await HostileUpstream("openai_compatible").start()
    try:
        await _seed(admin, hostile)
        monkeypatch.setenv(ENV_NAME, ENV_CREDENTIAL)
        data_dir = Path(tempfile.mkdtemp(prefix="scan-node-", dir=private_tmp))
        (data_dir / "credentials").mkdir(mode=0o700)
        (data_dir / "credentials" / "upstream.key").write_text(FILE_CREDENTIAL + "\n")
        link_settings = await control_plane.node_link()
        enroll_token = str(link_settings["enroll_token"])
        node = await loopback_node(
            control_plane, "scan-node", private_tmp, data_dir=data_dir, sealing_key=SEALING_KEY
        )
        await node.start()
        try:
            idp = TestIdp()
            issuer = snapshot_pb2.JwtIssuer(
                issuer=idp.issuer, audiences=[AUDIENCE], algorithms=["ES256", "RS256"], jwks_json=idp.jwks()
            )
            await admin.AddJwtIssuer(admin_pb2.AddJwtIssuerRequest(tenant=TENANT, issuer=issuer))
            key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name="scan"))
            revoked = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name="gone"))
            # A hash key rotation: the new version's key is as secret as the first one's.
            rotation = await admin.RotateApiKeyHashKey(admin_pb2.RotateApiKeyHashKeyRequest())
            found.add("admin RotateApiKeyHashKey", text_format.MessageToString(rotation))
            rotated = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant=TENANT, name="rotated"))
            with pytest.raises(grpc.aio.AioRpcError) as in_use:
                await admin.RetireApiKeyHashKey(admin_pb2.RetireApiKeyHashKeyRequest(version=1))
            assert in_use.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            found.add("admin RetireApiKeyHashKey error", str(in_use.value.details()))
            assert control_plane.cp.admin is not None
            _, second_token = await control_plane.cp.admin.create_token("second-admin")
            await node.store.wait_for_version(await admin.latest_version(), timeout=15)

            jwt_token = idp.token()
            rsa_token = idp.token(kid="rsa-1", alg="RS256")
            served = 0
            for token in (key.secret, rotated.secret, jwt_token, rsa_token):
                for model in MODELS:
                    served += await _infer(node.address, token, model, found)
            assert served == 12, "the ok models serve every caller; the echoing ones fail"
            await admin.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=revoked.key.id))
            await node.store.wait_for_version(await admin.latest_version(), timeout=15)
            # Credentials where they do not belong: refused, and not echoed.
            for token in (revoked.secret, control_plane.token, key.secret[:-3], key.secret + "x"):
                assert not await _infer(node.address, token, "ok-env", found)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin.ListTenants(
                    admin_pb2.ListTenantsRequest(), metadata=(("authorization", f"Bearer {key.secret}"),)
                )
            found.add("admin refusal", str(refused.value.details()))

            async def shipped() -> bool:
                # In a thread: a blocking query would stall the control plane sharing this loop.
                rows = await asyncio.to_thread(
                    sql_rows, control_plane.database_url, "SELECT count(*) FROM evidence_records"
                )
                return int(rows[0][0]) >= 4 * len(MODELS) + 4  # type: ignore[call-overload]

            await eventually(shipped, timeout=20, message="every request's evidence is in the store")
            listings = await _every_listing(admin, found)

            assert listings >= 10
            evidence = log_path(data_dir, "scan-node")
            for path in evidence.parent.iterdir():
                found.add(f"node evidence {path.name}", path.read_bytes())
            # The one place the hash key versions belong: the node's own copy.
            hash_key_file = data_dir / SNAPSHOT_DIR / API_KEY_HASH_KEY_FILE
            hash_keys = decode_hash_keys(hash_key_file.read_bytes(), str(hash_key_file))
            assert hash_keys.versions == (1, 2)
            for path in (data_dir / SNAPSHOT_DIR).iterdir():
                if path.name != API_KEY_HASH_KEY_FILE:
                    found.add(f"node snapshot dir {path.name}", path.read_bytes())
        finally:
            await node.stop()
    finally:
        await hostile.stop()
    assert hostile.calls, "the hostile upstream was reached"

    for version, envelope_bytes in sql_rows(
        control_plane.database_url, "SELECT version, envelope FROM snapshots"
    ):
        envelope = snapshot_pb2.SignedEnvelope.FromString(bytes(envelope_bytes))  # type: ignore[arg-type]
        decoded = snapshot_pb2.Snapshot.FromString(envelope.payload)
        found.add(f"snapshot v{version}", text_format.MessageToString(decoded))
        found.add(f"snapshot v{version} (bytes)", bytes(envelope_bytes))  # type: ignore[arg-type]
    tables = await _tables(control_plane.database_url)
    assert {"public.api_keys", "public.snapshots", "public.audit_log"} <= set(tables) or len(tables) > 10
    for table in tables:
        for (row,) in await _sql(control_plane.database_url, f"SELECT t::text FROM {table} t"):
            found.add(f"table {table}", str(row))
    for record in caplog.records:
        found.add(f"log {record.name}", record.getMessage() + (record.exc_text or ""))
    found.add("log text", caplog.text)

    hasher = control_plane.cp.api_key_hasher
    assert hasher is not None
    kek_file = control_plane.data_dir / "kek"
    named: dict[str, bytes] = {
        "admin token": control_plane.token.encode(),
        "second admin token": second_token.encode(),
        "API key": key.secret.encode(),
        "API key secret part": key.secret.split("_", 2)[2].encode(),
        "revoked API key": revoked.secret.encode(),
        "env credential": ENV_CREDENTIAL.encode(),
        "file credential": FILE_CREDENTIAL.encode(),
        "sealed credential": SEALED_CREDENTIAL.encode(),
        "sealing private key": SEALING_KEY.private_bytes_raw(),
        "JWT (ES256)": jwt_token.encode(),
        "JWT (ES256) signature": jwt_token.rsplit(".", 1)[1].encode(),
        "JWT (RS256) signature": rsa_token.rsplit(".", 1)[1].encode(),
        "IdP EC private key": idp.ec.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption()),
        "IdP EC private value": idp.ec.private_numbers().private_value.to_bytes(32, "big"),
        "enrollment token": enroll_token.encode(),
        "API-key hash key": hasher.key,
        "API key (hash key version 2)": rotated.secret.encode(),
        **{f"API-key hash key version {v}": k for v, k in hash_keys.by_version.items()},
    }
    assert named["API-key hash key version 1"] == hasher.key
    if kek_file.exists():
        named["KEK"] = base64.b64decode(kek_file.read_bytes().strip())
    # The scan finds what it looks for: a planted secret is reported.
    canary = Haystack()
    canary.add("canary", b"prefix " + base64.b64encode(ENV_CREDENTIAL.encode()))
    assert canary.findings({"env credential": ENV_CREDENTIAL.encode()})

    # Every kind of place was searched, and holds what the scenario wrote there.
    kinds = {place.split(" ", 1)[0] for place in found.places}
    assert {"log", "Infer(echo-env)", "admin", "snapshot", "table", "node"} <= kinds, kinds
    assert "table public.evidence_records" in found.places
    assert "table public.audit_log" in found.places or any("audit" in p for p in found.places)
    assert any(p.startswith("node evidence") for p in found.places)
    places = sum(len(values) for values in found.places.values())
    print(f"secret scan: {len(named)} secrets in {places} texts from {len(found.places)} places")
    findings = found.findings(named)
    assert not findings, "\n".join(findings[:20])
