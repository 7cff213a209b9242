"""A signed snapshot for the peer benchmark: what ``bench/peers/signalbox.sh`` serves.

Writes into ``DIR``: ``trust-key.pem`` (an Ed25519 public key made for this run), ``pin.bin``
(a signed snapshot: tenant ``bench``, one API key, an ``openai_compatible`` provider per mock
upstream, models ``gpt-4o-mini`` -> the fast mock and ``gpt-4o-mini-slow`` -> the delayed one,
a policy allowing both) and ``api-key`` (the key's secret, 0600). Every production feature of
the node stays on: the key is checked, the policy routes, evidence is written.

    python bench/peers/signalbox_pin.py DIR FAST_URL SLOW_URL
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataplane.snapshot.envelope import SNAPSHOT_PAYLOAD_TYPE, key_id_for, pae
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2

CAPABILITIES = (common_pb2.CAPABILITY_CHAT, common_pb2.CAPABILITY_STREAMING, common_pb2.CAPABILITY_TOOLS)


def build(directory: Path, fast_url: str, slow_url: str, mtls_uris: tuple[str, ...] = ()) -> None:
    """``mtls_uris``: client certificate URI SANs mapped to the tenant (bench/mtls_cost.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    api_key = "sbx_bench_" + secrets.token_urlsafe(32)
    snap = snapshot_pb2.Snapshot(version=1)
    snap.created_at.FromSeconds(int(time.time()))
    snap.tenants.add(id="t-bench", name="bench", active=True)
    snap.api_keys.add(
        id="k-bench", tenant_id="t-bench", secret_sha256=hashlib.sha256(api_key.encode()).digest()
    )
    for alias, url in (("gpt-4o-mini", fast_url), ("gpt-4o-mini-slow", slow_url)):
        provider = f"p-{alias}"
        snap.providers.add(
            id=provider,
            name=alias,
            type="openai_compatible",
            base_url=url.rstrip("/"),
            location=snapshot_pb2.PROVIDER_LOCATION_ON_PREM,  # the mock is on this machine
        )
        model = snap.models.add(
            id=f"m-{alias}",
            alias=alias,
            capabilities=CAPABILITIES,
            context_window=128_000,
            max_output_tokens=4096,
            input_price_nanos_per_mtok=150_000_000,
            output_price_nanos_per_mtok=600_000_000,
        )
        model.deployments.add(id=f"d-{alias}", provider_id=provider, upstream_model="gpt-4o-mini")
    document = {"default_model": "gpt-4o-mini", "allowed_models": ["gpt-4o-mini", "gpt-4o-mini-slow"]}
    snap.policies.add(id="pol-bench", tenant_id="t-bench", version=1, document_json=json.dumps(document))
    for n, uri in enumerate(mtls_uris):
        snap.identities.add(id=f"id-mtls-{n}", tenant_id="t-bench", mtls=snapshot_pb2.MtlsMapping(uri=uri))
    payload = snap.SerializeToString()
    envelope = snapshot_pb2.SignedEnvelope(payload_type=SNAPSHOT_PAYLOAD_TYPE, payload=payload)
    envelope.signatures.add(
        key_id=key_id_for(key.public_key()), sig=key.sign(pae(SNAPSHOT_PAYLOAD_TYPE, payload))
    )
    (directory / "pin.bin").write_bytes(envelope.SerializeToString())
    (directory / "trust-key.pem").write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    secret = directory / "api-key"
    secret.write_text(api_key)
    os.chmod(secret, 0o600)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    build(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
