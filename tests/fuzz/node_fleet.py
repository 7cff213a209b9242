"""The node-facing fuzz suite's harness: a real control plane, two enrolled nodes, and what
every answer to a node is held to.

``fleet`` starts a control plane on a fresh database (real PostgreSQL, real gRPC, the
node port's real mutual TLS), a tenant with every limit set and an API key, and enrolls
two nodes for real (token, CSR, Enroll): ``node-f``, the fuzzer, and ``node-g``, whose ids
and chains ``node-f`` claims. ``answer_ok`` is the contract of a refusal: a defined status,
a message that names the field or rule, bounded, one line, never a caller's long value
whole.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dataplane.evidence import checkpoint as node_checkpoint
from dataplane.evidence.merkle import Tree
from dataplane.evidence.records import GENESIS_HASH, seal
from dataplane.identity import IdentityFiles
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.evidence.v1 import evidence_pb2, evidence_pb2_grpc
from signalbox.tls import ClientTls, aio_channel
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane

DEFINED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
"""What a refusal of a node's (or an enrolling caller's) bad input may be. Not UNAVAILABLE:
on a healthy database that tells the node to send the same thing again, for ever."""
MESSAGE_BYTES = 1024
ECHO_CHARS = 256
"""A caller's value longer than this never comes back whole in a message."""
RULE_MESSAGES = frozenset({"enrollment token rejected"})
"""Messages that name a rule without a ``field:`` (the token's answer tells nothing on purpose)."""
RULE_STARTS = ("chain ", "node ", "certificate ")
"""Messages that name the rule by what it is about (a chain of another node, a revoked node)."""
BATCH_ERROR_CODES = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "DATA_LOSS"})
TIMEOUT = 10.0

FUZZER, OTHER = "node-f", "node-g"

# ---- strategies shared by the properties ----

_chars = st.characters(exclude_categories=("Cs",))  # surrogates cannot be sent as protobuf strings
odd_text = st.one_of(
    st.text(_chars, max_size=30),
    st.sampled_from(["", "a\x00b", "\x00", "é" * 201, "x" * 300, "\u202e\x1b[2J", "line\nforged", "😀" * 70]),
    st.builds(
        lambda n, c: c * n, st.sampled_from([63, 64, 65, 256, 257, 5000]), st.sampled_from("aé😀\x00 ")
    ),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x1F), max_size=8),
)
uint64 = st.one_of(
    st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1])
)
uint32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1]))
enum_values = st.one_of(st.integers(0, 6), st.integers(-(2**31), 2**31 - 1))
hashes_ = st.one_of(st.binary(max_size=40), st.sampled_from([b"", b"\x00" * 32, b"h" * 33, b"h" * 100_000]))


def _csr(key: Any, cn: str = "node") -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    request = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, algorithm)
    return request.public_bytes(serialization.Encoding.PEM).decode()


CSRS = {
    "p256": _csr(ec.generate_private_key(ec.SECP256R1())),
    "p384": _csr(ec.generate_private_key(ec.SECP384R1())),
    "ed25519": _csr(ed25519.Ed25519PrivateKey.generate()),
    "rsa": _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
}
"""Requests of one key each, made once (RSA and P-384 keys are slow to generate)."""


def _mangled(pem: str, at: int, junk: str) -> str:
    at %= len(pem)
    return pem[:at] + junk + pem[at + 1 :]


csrs = st.one_of(
    st.sampled_from(sorted(CSRS.values())),
    st.builds(_mangled, st.sampled_from(sorted(CSRS.values())), st.integers(0, 2000), odd_text),
    odd_text,
    st.sampled_from(
        [
            "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n",
            "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * 70_000 + "\n-----END CERTIFICATE REQUEST-----\n",
            "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n",
        ]
    ),
)

# ---- the contract of an answer ----


def sent_strings(message: Any) -> list[str]:
    """Every string of a protobuf message, nested."""
    found: list[str] = []
    for _, value in message.ListFields():
        values = value if hasattr(value, "extend") else [value]  # a repeated field
        for item in values:
            if isinstance(item, str):
                found.append(item)
            elif hasattr(item, "ListFields"):
                found.extend(sent_strings(item))
    return found


def answer_ok(code: grpc.StatusCode, details: str, sent: Iterable[str] = ()) -> None:
    """A refusal as the contract says: a defined status, a bounded one-line message naming
    the field or the rule, no long caller value echoed whole."""
    assert code in DEFINED, f"{code.name}: {details[:300]!r}"
    assert details, f"{code.name} without a message"
    assert len(details.encode()) <= MESSAGE_BYTES, f"{len(details.encode())}-byte message"
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in details), f"control character in {details!r}"
    assert ":" in details or details in RULE_MESSAGES or details.startswith(RULE_STARTS), (
        f"names no field or rule: {details!r}"
    )
    for value in sent:
        if len(value) > ECHO_CHARS:
            assert value[:ECHO_CHARS] not in details, f"echoes a {len(value)}-character value"


def batch_error_ok(error: evidence_pb2.BatchError) -> None:
    assert error.code in BATCH_ERROR_CODES, error.code
    assert error.message
    assert len(error.message.encode()) <= MESSAGE_BYTES
    assert not any(ord(c) < 0x20 for c in error.message), error.message


async def call_status(call: Any) -> tuple[grpc.StatusCode, Any]:
    """(OK, response) or (status, details)."""
    try:
        return grpc.StatusCode.OK, await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


# ---- the fleet ----


@dataclass
class Fleet:
    cp: RunningControlPlane
    db: AsyncEngine
    admin: Admin
    files: IdentityFiles
    """``node-f``'s identity: its key signs its checkpoints."""
    tls: ClientTls
    other_tls: ClientTls
    channel: grpc.aio.Channel
    """``node-f`` on the node port."""
    tenant_id: str
    key_id: str
    other_tenant_id: str
    """A tenant without limits."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # what hypothesis prints of it
        printer.text(f"Fleet({self.cp.node_address})")

    async def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        async with self.db.connect() as conn:
            return [tuple(r) for r in await conn.execute(sa.text(sql), params)]

    async def count(self, table: str) -> int:
        return int((await self.rows(f"SELECT count(*) FROM {table}"))[0][0])

    async def ship(self, batch: evidence_pb2.ShipBatch) -> tuple[grpc.StatusCode, Any]:
        """One batch on a stream of its own: (OK, its ack) or how the stream ended."""

        async def one() -> AsyncIterator[evidence_pb2.ShipBatch]:
            yield batch

        call = evidence_pb2_grpc.EvidenceServiceStub(self.channel).Ship(one(), timeout=TIMEOUT)
        try:
            acks = [ack async for ack in call]
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        assert len(acks) == 1, acks
        return grpc.StatusCode.OK, acks[0]

    async def head(self, chain_id: str) -> tuple[int, str]:
        """The chain's stored head: (seq, hash hex), (0, genesis) for a new chain."""
        if "\x00" in chain_id:  # no such chain (nor a text column that could hold the id)
            return 0, GENESIS_HASH
        rows = await self.rows(
            "SELECT head_seq, head_hash FROM evidence_chains WHERE chain_id = :c", c=chain_id
        )
        if not rows or not rows[0][0]:
            return 0, GENESIS_HASH
        return int(rows[0][0]), bytes(rows[0][1]).hex()

    async def stored_lines(self, chain_id: str) -> list[bytes]:
        if "\x00" in chain_id:
            return []
        rows = await self.rows(
            "SELECT body FROM evidence_records WHERE chain_id = :c ORDER BY seq DESC LIMIT 8", c=chain_id
        )
        return [bytes(r[0]) + b"\n" for r in reversed(rows)]

    async def root(self, chain_id: str, size: int) -> bytes:
        tree = Tree()
        if "\x00" in chain_id:
            return tree.root()
        for (digest,) in await self.rows(
            "SELECT hash FROM evidence_records WHERE chain_id = :c AND seq <= :n ORDER BY seq",
            c=chain_id,
            n=size,
        ):
            tree.append(bytes(digest))
        return tree.root()

    def checkpoint(self, chain_id: str, size: int, root: bytes) -> str:
        key = self.files.private_key()
        return node_checkpoint.sign(key, chain_id, size, root, int(time.time())).decode()

    async def ship_next(self, chain_id: str = f"{FUZZER}/0") -> None:
        """The legitimate call: the chain's next record is stored and acknowledged."""
        seq, prev = await self.head(chain_id)
        code, ack = await self.ship(
            evidence_pb2.ShipBatch(chain_id=chain_id, records=[seal(record(chain_id, seq + 1, prev))])
        )
        assert code == grpc.StatusCode.OK, (code, ack)
        assert (ack.stored, ack.head_seq, ack.HasField("error")) == (1, seq + 1, False), ack


def record(chain_id: str, seq: int, prev: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """A record as a node writes it (``dataplane.evidence.log``), ``fields`` on top."""
    node_id = chain_id.rpartition("/")[0]
    return {
        "ts": time.time(),
        "record_id": secrets.token_hex(16),
        "chain_id": chain_id,
        "node_id": node_id,
        "seq": seq,
        "prev_hash": prev,
        "correlation_id": "corr",
        "tenant_id": "acme",
        "outcome": {"code": "OK"},
        **(fields or {}),
    }


@pytest.fixture
async def fleet(database_url: str, private_tmp: Path) -> AsyncIterator[Fleet]:
    async with running_control_plane(cp_settings(database_url, private_tmp)) as cp:
        db = create_async_engine(database_url, pool_size=2)
        async with grpc.aio.insecure_channel(cp.address) as admin_channel:
            admin = Admin(admin_pb2_grpc.AdminServiceStub(admin_channel), cp.metadata)
            tenant = await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
            other = await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="other"))
            key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(tenant="acme", name="k"))
            for key_id in ("", key.key.id):
                await admin.SetLimits(
                    admin_pb2.SetLimitsRequest(
                        tenant="acme",
                        key_id=key_id,
                        requests_per_minute=600,
                        tokens_per_minute=100_000,
                        budget_day_nanos=10**12,
                        budget_month_nanos=10**13,
                    )
                )
            files = IdentityFiles(private_tmp / f"fuzz-{secrets.token_hex(4)}")
            tls = await cp.enroll(FUZZER, files.directory)
            other_tls = await cp.enroll(OTHER, private_tmp / f"fuzz-{secrets.token_hex(4)}")
            async with aio_channel(cp.node_address, tls) as channel:
                try:
                    yield Fleet(
                        cp, db, admin, files, tls, other_tls, channel, tenant.id, key.key.id, other.id
                    )
                finally:
                    await db.dispose()
