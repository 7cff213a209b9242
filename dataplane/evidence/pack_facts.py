"""What a control-plane Evidence Pack (version 2) states beyond its records, and the checks
``pack_verify.verify`` makes of it:

- **pruned ranges** (the ``pruned`` section): per chain whose oldest records retention
  dropped, the control plane's signed statements of what it dropped
  (``dataplane.evidence.pruned``), oldest first. Each must verify with a trusted key (the
  seal's), be of the chain it is listed under, and continue the one before (the first from
  seq 1); the chain's searched range must then start one after the last pruned seq, and a
  chain without a statement must be searched from seq 1: no record is left out unsaid.
- **revoked certificates** (``revoked`` in the certificates section): certificate SHA-256 ->
  when it was revoked. A checkpoint is judged at the time a trusted control-plane key
  witnessed it (its cosignature, ``dataplane.evidence.cosignature``): it existed by then,
  whatever the node claims. Without a witness (stored before the control plane cosigned,
  or cosigned by a key not trusted here) it is judged at its own ``time`` line, the node's
  claim (a stolen key can sign any time), and the report says so. A checkpoint that
  verifies only with certificates revoked before that time fails; one whose certificate
  was revoked after it verifies, with a note saying so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding

from dataplane.evidence.checkpoint import Checkpoint
from dataplane.evidence.pack import Certificates, PackInvalid, Searched
from dataplane.evidence.pruned import PrunedStatement, verify_statement


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the certificate's DER: how ``revoked`` names a certificate."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


# ---- pruned ranges ----


def pruned_statements(
    value: Mapping[str, list[str]], trusted: Mapping[str, Ed25519PublicKey], line_no: int
) -> dict[str, list[PrunedStatement]]:
    """The ``pruned`` section's statements, each verified and in order (module docstring)."""
    checked: dict[str, list[PrunedStatement]] = {}
    for chain_id, envelopes in value.items():
        statements = checked.setdefault(chain_id, [])
        for n, envelope in enumerate(envelopes, start=1):
            where = f"line {line_no}: chain {chain_id[:100]}: pruned-range statement {n}"
            try:
                statement = verify_statement(envelope, trusted)
            except ValueError as exc:
                raise PackInvalid(f"{where} does not verify: {exc}") from exc
            if statement.chain_id != chain_id:
                raise PackInvalid(
                    f"{where} is of chain {statement.chain_id[:100]!r} (moved from another chain?)"
                )
            expected = statements[-1].last_seq + 1 if statements else 1
            if statement.first_seq != expected:
                raise PackInvalid(
                    f"{where} states seqs {statement.first_seq}..{statement.last_seq} pruned, not the "
                    f"chain's next range from seq {expected} (one removed or reordered?)"
                )
            statements.append(statement)
    return checked


def check_searched_range(s: Searched, statements: Sequence[PrunedStatement], where: str) -> None:
    """A control-plane pack's chain ``s`` is searched from one after its pruned range
    (``statements``, may be empty) and not from within it."""
    last = statements[-1].last_seq if statements else 0
    if s.from_seq == last + 1 and s.to_seq >= last:
        return
    if not statements:
        raise PackInvalid(
            f"{where}: the searched range starts at seq {s.from_seq}, but the pack holds no "
            f"pruned-range statement for the records before it (left out?)"
        )
    raise PackInvalid(
        f"{where}: the searched range {s.from_seq}..{s.to_seq} does not start one after the pruned "
        f"range 1..{last} of its pruned-range statement"
    )


# ---- revoked certificates ----


def revocations(
    certs: Certificates, loaded: Mapping[str, list[x509.Certificate]], line_no: int
) -> dict[str, datetime]:
    """``revoked`` checked: each names a certificate of the section, at an RFC 3339 time."""
    if certs.revoked is None:
        return {}
    present = {fingerprint(cert) for certificates in loaded.values() for cert in certificates}
    times: dict[str, datetime] = {}
    for sha256, text in certs.revoked.items():
        where = f"line {line_no}: revoked {sha256[:64]!r}"
        if sha256 not in present:
            raise PackInvalid(f"{where}: names no certificate of the pack")
        try:
            when = datetime.fromisoformat(text) if len(text) <= 40 else None
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise PackInvalid(f"{where}: {text[:40]!r} is not an RFC 3339 time with a zone")
        times[sha256] = when
    return times


def revocation_note(
    cp: Checkpoint,
    verified: Sequence[tuple[int, x509.Certificate]],
    revoked: Mapping[str, datetime],
    chain_id: str,
    where: str,
    witnessed: int | None = None,
) -> str | None:
    """Whether a checkpoint that verified with the certificates ``verified`` (their number in
    the section, the certificate) stands: None when one of them is not revoked, a note when
    one was revoked only after the checkpoint's time (``witnessed``, else its own);
    ``PackInvalid`` when all were revoked before it."""
    dated = [(n, fingerprint(cert)) for n, cert in verified]
    if any(sha256 not in revoked for _, sha256 in dated):
        return None
    if witnessed is not None:
        signed = datetime.fromtimestamp(witnessed, UTC)
        when = f"witnessed by the control plane at {rfc3339(signed)}"
    else:
        signed = datetime.fromtimestamp(cp.time, UTC)
        when = f"signed at {rfc3339(signed)} (the node's claim)"
    later = [(n, sha256) for n, sha256 in dated if revoked[sha256] >= signed]
    if not later:
        n, sha256 = max(dated, key=lambda d: revoked[d[1]])
        raise PackInvalid(
            f"{where}: the checkpoint of size {cp.size}, {when}, verifies only with "
            f"certificate {n} of node {cp.node_id!r} ({sha256[:16]}…), revoked at "
            f"{rfc3339(revoked[sha256])}, before it"
        )
    n, sha256 = later[0]
    return (
        f"chain {chain_id}: its checkpoint of size {cp.size} ({when}) verifies "
        f"with certificate {n} of node {cp.node_id!r} ({sha256[:16]}…), revoked later, at "
        f"{rfc3339(revoked[sha256])}"
    )
