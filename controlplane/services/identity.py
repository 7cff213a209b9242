"""Node identity: one-time enrollment tokens, certificates issued from CSRs, renewal, revocation.

A token is ``sbx_enroll_<id>_<secret>`` with a 256-bit secret; only the SHA-256 of the
whole token is stored. Enrollment consumes it atomically in the same transaction that
records the issued certificate, so a token is used once or not at all. Any token
problem is the same ``Unauthenticated`` for the caller; the audit row says which (by
token id, never the secret).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import EnrollToken, NodeCertificate
from controlplane.db.session import database_now
from controlplane.errors import (
    AlreadyExists,
    ControlPlaneError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from controlplane.identity.ca import Issued, NodeCaKey, NodeCertificateSpec, NodePublicKey, parse_csr
from controlplane.limits import NODE_ID_CHARS
from controlplane.repositories import groups as group_repo
from controlplane.repositories import identity as repo
from controlplane.services.base import Caller, check_name
from signalbox.text import printable
from signalbox.wallclock import utc_now

log = logging.getLogger(__name__)

TOKEN_PREFIX = "sbx_enroll_"
_TOKEN = re.compile(r"sbx_enroll_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")
MAX_TOKEN_CHARS = 128
MAX_TOKEN_TTL = timedelta(days=7)
MIN_CERT_TTL = timedelta(seconds=2)
"""Short enough for tests of renewal; nothing real runs with it."""
MAX_CERT_TTL = timedelta(days=365)
RENEWALS_PER_LIFETIME = 10
"""A node is renewed at most once per this fraction of a certificate's lifetime."""
MODES = ("cloud", "on-prem", "air-gapped")
TOKEN_REJECTED = "enrollment token rejected"
"""The one message for every token problem, so Enroll is no oracle for which tokens exist."""

Audit = Callable[..., Awaitable[None]]


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def token_id_of(token: str) -> str | None:
    """The id of a well-formed token (not secret), else None."""
    match = _TOKEN.fullmatch(token) if len(token) <= MAX_TOKEN_CHARS else None
    return match.group(1) if match else None


def check_node_id(field: str, node_id: str) -> str:
    """1..256 characters, none of them control characters (the id keys rows and log lines)."""
    if not node_id or len(node_id) > NODE_ID_CHARS or printable(node_id, NODE_ID_CHARS) != node_id:
        raise InvalidArgument(
            field,
            f"must be 1..{NODE_ID_CHARS} characters without control characters "
            f'(got "{printable(node_id, 80)}")',
        )
    return node_id


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who a node is, from its certificate's record (or, with ``--insecure``, its Hello)."""

    node_id: str
    group: str
    mode: str = ""
    site: str = ""
    serial: str = ""
    """Hex serial of the certificate; "" on an insecure node port."""
    not_after: datetime | None = None
    public_key: bytes = b""
    """DER SubjectPublicKeyInfo of the presented certificate (signs the node's evidence)."""


def identity_of(row: NodeCertificate) -> NodeIdentity:
    return NodeIdentity(row.node_id, row.node_group, row.mode, row.site, row.serial, row.not_after)


@dataclass(slots=True)
class IdentityService:
    sessions: async_sessionmaker[AsyncSession]
    ca: NodeCaKey
    cert_ttl: timedelta
    audit: Audit
    """``AdminService.audit``: enrollments are recorded in the admin audit trail."""
    admit_refusal: Callable[[str], bool] = lambda peer: True
    """Whether a refused enrollment from this peer gets its own audit row (the app passes
    ``UnauthenticatedAuditLimit.admit``: a token scanner cannot fill the audit table)."""
    host_clock: Callable[[], datetime] = utc_now
    """This host's clock: only compared with the database's (``_now``)."""

    async def _now(self, session: AsyncSession) -> datetime:
        """The time certificates, tokens and revocations are dated by: the database's, which
        every replica shares and which the checks in SQL (``repo``) read. A replica's own
        clock behind by more than a certificate's lifetime (a host booted at 1970) issued
        certificates expired on arrival, and tokens no enrollment could use."""
        return await database_now(session, self.host_clock, "node certificates")

    async def _refused(
        self, peer: str, actor: str, target: str, detail: str, exc: ControlPlaneError | None = None
    ) -> None:
        if self.admit_refusal(peer):
            result = exc.status.name if exc is not None else "UNAUTHENTICATED"
            await self.audit(actor=actor, method="Enroll", target=target, result=result, detail=detail)

    async def create_token(
        self, caller: Caller, *, group: str, ttl: timedelta, mode: str = "", site: str = ""
    ) -> tuple[EnrollToken, str]:
        """A new token; returns (row, token). The token itself is not kept."""
        check_name("group", group)
        if mode and mode not in MODES:
            raise InvalidArgument("mode", f"must be one of {', '.join(MODES)} (or empty)")
        if site:
            check_name("site", site)
        if not timedelta(seconds=1) <= ttl <= MAX_TOKEN_TTL:
            raise InvalidArgument(
                "ttl_seconds", f"must be 1 .. {int(MAX_TOKEN_TTL.total_seconds())} (7 days)"
            )
        token_id = secrets.token_hex(8)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        async with self.sessions() as session, session.begin():
            # The group decides what its nodes are: certificates carry its mode and site.
            defined = await group_repo.get(session, group)
            if defined is None:
                raise NotFound("node group", group)
            if mode and mode != defined.mode:
                raise InvalidArgument("mode", f"node group {group!r} is {defined.mode}, not {mode}")
            if site and site != defined.site:
                raise InvalidArgument(
                    "site", f"node group {group!r} is at site {defined.site!r}, not {site!r}"
                )
            row = EnrollToken(
                id=token_id,
                secret_sha256=token_digest(token),
                node_group=group,
                mode=defined.mode,
                site=defined.site,
                created_by=caller.actor,
                expires_at=await self._now(session) + ttl,
            )
            session.add(row)
        return row, token

    async def list_tokens(self) -> Sequence[EnrollToken]:
        async with self.sessions() as session:
            return await repo.tokens(session)

    async def enroll(
        self, *, token: str, csr_pem: str, node_id: str, peer: str, software_version: str = ""
    ) -> Issued:
        """A certificate for ``node_id`` and the CSR's key, consuming ``token``."""
        check_node_id("node_id", node_id)
        public_key = parse_csr(csr_pem)
        token_id = token_id_of(token)
        actor = f"node:{printable(node_id, 150)}"
        target = f"node_id={printable(node_id, 150)}"
        if token_id is None:
            await self._refused(peer, actor, target, f"malformed enrollment token from {peer}")
            raise Unauthenticated(TOKEN_REJECTED)
        digest = token_digest(token)
        try:
            async with self.sessions() as session, session.begin():
                await repo.lock_node(session, node_id)
                row = await repo.consume(session, token_id, digest, node_id)
                if row is not None:
                    await _check_unclaimed(session, node_id, public_key)  # rolls the use back
                    spec = NodeCertificateSpec(node_id, row.node_group, row.mode, row.site)
                    issued = self.ca.issue_node(spec, public_key, self.cert_ttl, await self._now(session))
                    session.add(_record(issued, spec, token_id=token_id))
        except AlreadyExists as exc:
            await self._refused(peer, actor, target, f"token {token_id}: {exc.message} (from {peer})", exc)
            raise
        if row is None:
            why = await self._why_refused(token_id, digest)
            await self._refused(peer, actor, target, f"enrollment token {token_id}: {why} (from {peer})")
            raise Unauthenticated(TOKEN_REJECTED)
        await self.audit(
            actor=actor, method="Enroll", target=target, result="OK",
            detail=f"token {token_id}, group {spec.group}, certificate {issued.serial} until "
            f"{issued.not_after.isoformat()}, software {printable(software_version, 100) or '?'}",
        )  # fmt: skip
        log.info(
            "node %s enrolled in group %s (certificate %s)", printable(node_id), spec.group, issued.serial
        )
        return issued

    async def certify(
        self, caller: Caller, *, node_id: str, csr_pem: str, group: str, ttl: timedelta | None = None
    ) -> Issued:
        """Provisioning: a certificate for ``node_id`` and the CSR's key, bound to ``group``'s
        mode and site, for a node that cannot enroll online (an air-gapped site). The node's
        key never leaves it; evidence it signed with that key before now verifies with the
        certificate from now on."""
        check_node_id("node_id", node_id)
        check_name("group", group)
        public_key = parse_csr(csr_pem)
        ttl = MAX_CERT_TTL if ttl is None else ttl
        if not MIN_CERT_TTL <= ttl <= MAX_CERT_TTL:
            raise InvalidArgument(
                "ttl_seconds",
                f"must be {int(MIN_CERT_TTL.total_seconds())} .. {int(MAX_CERT_TTL.total_seconds())} "
                "(0: the longest)",
            )
        async with self.sessions() as session, session.begin():
            defined = await group_repo.get(session, group)
            if defined is None:
                raise NotFound("node group", group)
            await repo.lock_node(session, node_id)
            # As for Enroll: an admin typing the id of a running node (a typo, a copied
            # command) must not mint a second identity for it with another key.
            await _check_unclaimed(session, node_id, public_key)
            spec = NodeCertificateSpec(node_id, group, defined.mode, defined.site)
            issued = self.ca.issue_node(spec, public_key, ttl, await self._now(session))
            session.add(_record(issued, spec))
        log.info(
            "node %s provisioned in group %s by %s (certificate %s)",
            printable(node_id),
            group,
            caller.actor,
            issued.serial,
        )
        return issued

    async def _why_refused(self, token_id: str, digest: bytes) -> str:
        async with self.sessions() as session:
            row = await repo.token(session, token_id)
        if row is None or not hmac.compare_digest(bytes(row.secret_sha256), digest):
            return "unknown"
        if row.used_at is not None:
            return f"already used by {printable(row.used_by or '', 100)}"
        return "expired"

    async def certificate(self, serial: str) -> NodeCertificate | None:
        async with self.sessions() as session:
            return await repo.certificate(session, serial)

    async def fill_certificate_pem(self, serial: str, pem: str) -> bool:
        """Keep the PEM of a certificate issued before the store kept them (migration 0015),
        as its node presents it: evidence packs carry it. The caller checked it is the one
        issued (its fingerprint)."""
        async with self.sessions() as session, session.begin():
            return await repo.fill_certificate_pem(session, serial, pem)

    async def renew(self, identity: NodeIdentity, csr_pem: str) -> Issued:
        """A new certificate for a node whose current one is valid: the same node id and
        group, with the mode and site the group has now (an operator who moved a group to
        another site must not see its nodes renew as what they were)."""
        public_key = parse_csr(csr_pem)
        async with self.sessions() as session, session.begin():
            await repo.lock_node(session, identity.node_id)
            current = await repo.certificate(session, identity.serial)
            # Checked again under the node's lock: a revocation committed since the
            # handshake must win, and one running now waits for this certificate.
            if current is None or current.revoked_at is not None:
                raise PermissionDenied(f"certificate {identity.serial} is revoked")
            now = await self._now(session)
            await self._check_renewal_due(session, identity.node_id, now)
            group = await group_repo.get(session, identity.group)
            if group is None:
                raise NotFound("node group", identity.group)
            spec = NodeCertificateSpec(identity.node_id, identity.group, group.mode, group.site)
            issued = self.ca.issue_node(spec, public_key, self.cert_ttl, now)
            session.add(_record(issued, spec))
        await self.audit(
            actor=f"node:{printable(identity.node_id, 150)}", method="Renew",
            target=f"node_id={printable(identity.node_id, 150)}", result="OK",
            detail=f"certificate {identity.serial} renewed as {issued.serial} until {issued.not_after.isoformat()}",
        )  # fmt: skip
        return issued

    async def _check_renewal_due(self, session: AsyncSession, node_id: str, now: datetime) -> None:
        """``ResourceExhausted`` while ``node_id``'s last renewal is younger than a tenth of a
        certificate's lifetime. A node renews at two thirds of it (a retry after a renewal it
        lost still comes well before its certificate runs out); without a bound, one certified
        node could call Renew in a loop, each call a certificate row, a certificate in force
        and a row in the append-only audit trail."""
        last = await repo.last_renewal(session, node_id)
        if last is None:
            return
        due = last + self.cert_ttl / RENEWALS_PER_LIFETIME
        if now < due:
            raise ResourceExhausted(
                f"node {printable(node_id, 150)}: renewed at {last.isoformat()}; the next renewal is "
                f"possible from {due.isoformat()} (nodes renew at two thirds of a certificate's lifetime)"
            )

    async def revoke(self, node_id: str) -> int:
        """Revoke every certificate of ``node_id`` and tell every replica to close its streams."""
        async with self.sessions() as session, session.begin():
            await repo.lock_node(session, node_id)
            if not await repo.has_certificates(session, node_id):
                raise NotFound("enrolled node", node_id, field="node_id")
            count = await repo.revoke(session, node_id, await self._now(session))
            await repo.announce_revocation(session, node_id)
        log.warning("node %s revoked (%d certificates)", printable(node_id), count)
        return count

    async def certificates_by_node(self) -> dict[str, repo.CertificateSummary]:
        async with self.sessions() as session:
            return await repo.newest_certificates(session)


async def _check_unclaimed(session: AsyncSession, node_id: str, public_key: NodePublicKey) -> None:
    """``AlreadyExists`` if a certificate of ``node_id`` in force (not revoked, not expired)
    is for another key than ``public_key``. A token is for a group, not for a node id: without
    this, any token (a stolen one, one for a group of kiosks) bought a second certificate for a
    running node, with which its holder could ship evidence into that node's chains and take
    over its row in node status. A node re-enrolling with its own key (moved to another group)
    proves it is that node; a lost key takes a revocation first, as a compromised one does."""
    key = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    for held in await repo.in_force(session, node_id):
        if not held.certificate_pem or _key_of(held.certificate_pem) != key:
            raise AlreadyExists(
                "enrolled node",
                node_id,
                field="node_id",
                why=f"it holds a certificate in force for another key (serial {held.serial}, until "
                f"{held.not_after.isoformat()}); revoke it first (signalbox admin node revoke) or "
                "use another node id",
            )


def _key_of(certificate_pem: str) -> bytes:
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    return certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _record(issued: Issued, spec: NodeCertificateSpec, *, token_id: str = "") -> NodeCertificate:
    return NodeCertificate(
        serial=issued.serial,
        node_id=spec.node_id,
        node_group=spec.group,
        mode=spec.mode,
        site=spec.site,
        not_before=issued.not_before,
        not_after=issued.not_after,
        sha256=issued.sha256,
        certificate_pem=issued.pem,
        token_id=token_id,
    )
