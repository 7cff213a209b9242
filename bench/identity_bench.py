"""Identity check cost per request: API key, JWT (ES256, RS256) and mTLS, with many keys loaded.

    .venv/bin/python bench/identity_bench.py                  # 50,000 keys, 20,000 calls each
    .venv/bin/python bench/identity_bench.py --keys 1000 --calls 500   # smoke run
    .venv/bin/python bench/identity_bench.py --hash-key-versions 2    # during a hash key rotation

A snapshot payload with ``--keys`` API keys (``sbx_<id>_<secret>``, looked up by their
HMAC-SHA256 under the hash key, as the control plane issues them; with
``--hash-key-versions N`` the node holds N live versions and the keys are spread over them,
as after rotations: every check then computes N HMACs) plus 1,000 keys of the
earlier format (SHA-256), one tenant JWT issuer (an ES256 and an RS256
key) and mTLS mappings (exact and prefix) is compiled by the node's own compiler
(``compile_payload``: the JWKS is parsed there, once), then ``dataplane.auth.authenticate``
is timed in-process, one call at a time, for each method. Output: median and p99 in
microseconds per call, and the API key target (median under 20 us) as PASS/FAIL. The refused
rows (an unknown key id, a known id with a wrong secret) show that both cost the same.

``mtls`` times a client certificate already seen (its SANs are cached per distinct
certificate, as on a node serving a long-lived client); ``mtls (first sight)`` parses the
certificate each time. Likewise ``jwt`` times a token already verified (a client sends one
token until it expires; the node remembers the tokens whose signature verified, and checks
their times, issuer entry and key on every call) and ``jwt (first sight)`` verifies the
signature each time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataplane import auth
from dataplane.errors import Unauthenticated
from dataplane.snapshot.compile import compile_payload
from signalbox.api.config.v1 import snapshot_pb2

API_KEY_TARGET_US = 20.0
AUDIENCE = "signalbox"


class Idp:
    """A tenant identity provider: an ES256 key (kid ec-1) and an RS256 key (kid rsa-1)."""

    issuer = "https://idp.bench.test"

    def __init__(self) -> None:
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        return json.dumps(
            {
                "keys": [
                    ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True) | {"kid": "ec-1"},
                    RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True) | {"kid": "rsa-1"},
                ]
            }
        )

    def token(self, *, kid: str = "ec-1", alg: str = "ES256", **claims: object) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": AUDIENCE, "sub": "bench", "iat": now, "exp": now + 3600, **claims}
        return jwt.encode(body, self.ec if alg == "ES256" else self.rsa, algorithm=alg, headers={"kid": kid})


def _certificate(uri: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


LEGACY_KEYS = 1000


def build(keys: int, idp: Idp, hash_keys: list[bytes]) -> tuple[bytes, list[str], list[str]]:
    """The payload, the new-format keys (key ``i`` hashed under version ``i % N``) and the
    earlier-format keys."""
    snap = snapshot_pb2.Snapshot(version=1)
    snap.tenants.add(id="t", name="t", active=True)
    secrets_list = []
    for i in range(keys):
        hash_key = hash_keys[i % len(hash_keys)]
        key_id = uuid.uuid4()
        secret = f"sbx_{key_id.hex}_{secrets.token_urlsafe(32)}"
        secrets_list.append(secret)
        digest = hmac.digest(hash_key, secret.encode(), "sha256")
        snap.api_keys.add(id=str(key_id), tenant_id="t", secret_hmac=digest)
    legacy = []
    for i in range(LEGACY_KEYS):
        secret = "sbx_" + secrets.token_urlsafe(32)
        legacy.append(secret)
        snap.api_keys.add(id=f"k{i}", tenant_id="t", secret_sha256=hashlib.sha256(secret.encode()).digest())
    snap.identities.add(
        id="jwt",
        tenant_id="t",
        jwt=snapshot_pb2.JwtIssuer(
            issuer=idp.issuer,
            audiences=[AUDIENCE],
            algorithms=["ES256", "RS256"],
            jwks_json=idp.jwks(),
            tier_claim="plan",
            metadata_claims={"team": "grp"},
        ),
    )
    for i in range(100):
        snap.identities.add(
            id=f"m{i}", tenant_id="t", mtls=snapshot_pb2.MtlsMapping(uri=f"spiffe://bench.test/svc/{i}")
        )
    snap.identities.add(
        id="ops", tenant_id="t", mtls=snapshot_pb2.MtlsMapping(uri="spiffe://bench.test/ops/", prefix=True)
    )
    return snap.SerializeToString(), secrets_list, legacy


def measure(call: Callable[[], object], calls: int) -> tuple[float, float]:
    """Median and p99 of one call, in microseconds."""
    for _ in range(min(calls // 10, 500)):
        call()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        started = clock()
        call()
        samples.append((clock() - started) / 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=50_000, help="API keys in the snapshot")
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per method")
    parser.add_argument(
        "--hash-key-versions", type=int, default=1, choices=range(1, 9), metavar="N",
        help="live API-key hash key versions the node holds (1..8)",
    )  # fmt: skip
    ns = parser.parse_args(argv)
    idp = Idp()
    hash_keys = [secrets.token_bytes(32) for _ in range(ns.hash_key_versions)]
    payload, keys, legacy = build(ns.keys, idp, hash_keys)
    started = time.perf_counter()
    # As the node's store does: the hash key versions it holds join the compiled snapshot.
    config = replace(compile_payload(payload), api_key_hash_keys=tuple(hash_keys))
    compile_ms = (time.perf_counter() - started) * 1000
    # Under the oldest version (the first HMAC matches; the others are computed all the same).
    api_key = keys[(len(keys) // 2) // len(hash_keys) * len(hash_keys)]
    newest = keys[len(hash_keys) - 1]
    known_id = api_key.split("_", 2)[1]
    unknown_id = f"sbx_{uuid.uuid4().hex}_{secrets.token_urlsafe(32)}"
    wrong_secret = f"sbx_{known_id}_{secrets.token_urlsafe(32)}"

    def refused(token: str) -> Callable[[], object]:
        def call() -> object:
            try:
                return auth.authenticate(config, token, now)
            except Unauthenticated as exc:
                return exc

        return call

    es256 = idp.token(plan="gold", grp="search")
    rs256 = idp.token(kid="rsa-1", alg="RS256")
    # Read after the tokens are minted: their ``iat`` (whole seconds of a later clock) would
    # be in the future of an earlier reading whenever a second boundary fell in between.
    now = time.time()
    known_cert = _certificate("spiffe://bench.test/svc/42")
    fresh = [_certificate("spiffe://bench.test/ops/deploy") for _ in range(min(ns.calls, 2000))]
    fresh_iter = iter(fresh * (ns.calls // len(fresh) + 2))

    def first_sight() -> object:
        pem = next(fresh_iter)
        auth._SAN_CACHE.pop(pem, None)  # bench only: force the parse every call
        return auth.authenticate(config, None, now, pem)

    def jwt_first_sight(token: str) -> Callable[[], object]:
        def call() -> object:
            auth._JWT_CACHE.clear()  # bench only: verify the signature every call
            return auth.authenticate(config, token, now)

        return call

    rows = [
        ("api key", lambda: auth.authenticate(config, api_key, now)),
        *(
            [("api key (newest version)", lambda: auth.authenticate(config, newest, now))]
            if len(hash_keys) > 1
            else []
        ),
        ("api key (sha256)", lambda: auth.authenticate(config, legacy[LEGACY_KEYS // 2], now)),
        ("api key unknown id", refused(unknown_id)),
        ("api key wrong secret", refused(wrong_secret)),
        ("jwt ES256", lambda: auth.authenticate(config, es256, now)),
        ("jwt RS256", lambda: auth.authenticate(config, rs256, now)),
        ("jwt ES256 (first sight)", jwt_first_sight(es256)),
        ("jwt RS256 (first sight)", jwt_first_sight(rs256)),
        ("mtls", lambda: auth.authenticate(config, None, now, known_cert)),
        ("mtls (first sight)", first_sight),
    ]
    print(f"{ns.keys} API keys (+{LEGACY_KEYS} of the earlier format) under {len(hash_keys)} hash key version(s), {len(config.identities.exact) + len(config.identities.prefixes)} mTLS mappings,"
          f" 1 JWT issuer; snapshot compiled in {compile_ms:.0f} ms; {ns.calls} calls per method")  # fmt: skip
    print(f"{'method':<24} {'median us':>10} {'p99 us':>10}")
    verdict = 0
    for name, call in rows:
        median, p99 = measure(call, ns.calls)
        note = ""
        if name == "api key":
            ok = median < API_KEY_TARGET_US
            note = f"  target < {API_KEY_TARGET_US:.0f} us: {'PASS' if ok else 'FAIL'}"
            verdict = 0 if ok else 1
        print(f"{name:<24} {median:>10.1f} {p99:>10.1f}{note}")
    return verdict


if __name__ == "__main__":
    raise SystemExit(main())
