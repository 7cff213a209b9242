"""``signalbox dataplane identity request`` against a node key file someone else put there:
a precise one-line refusal, nothing outside the identity directory touched, never a hang."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dataplane.identity import IdentityFiles, NodeIdentityError
from tests.helpers import signalbox_exit


def _encrypted(path: Path, victim: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )


def _directory(path: Path, victim: Path) -> None:
    path.mkdir(mode=0o755)


def _symlink(path: Path, victim: Path) -> None:
    path.symlink_to(victim)


def _dangling(path: Path, victim: Path) -> None:
    path.symlink_to(victim.with_name("missing"))


def _fifo(path: Path, victim: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize(
    ("plant", "rule"),
    [
        (_encrypted, "an encrypted private key"),
        (_directory, "not a regular file"),
        (_symlink, "a symbolic link"),
        (_dangling, "a symbolic link"),
        (_fifo, "not a regular file"),
    ],
    ids=["encrypted", "directory", "symlink", "dangling-symlink", "fifo"],
)
async def test_a_planted_key_file_is_refused_in_one_line_and_nothing_else_changes(
    tmp_path: Path, plant: Callable[[Path, Path], None], rule: str
) -> None:
    # Each was a traceback (TypeError, IsADirectoryError, FileExistsError), a hang (FIFO), or
    # a chmod through the symlink of a file outside the node's directory.
    identity = tmp_path / "node" / "identity"
    identity.mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("not the node's\n")
    victim.chmod(0o644)
    key = identity / "node.key"
    plant(key, victim)
    code, err = await signalbox_exit(
        "dataplane", "identity", "request", "--data-dir", str(tmp_path / "node"), "--node-id", "n1"
    )
    assert code == 1, err
    [line] = err.splitlines()
    assert line == f"identity request: {key}: {rule}" + (
        "; the node needs it unencrypted (0600)"
        if rule.startswith("an encrypted")
        else "; move it away to generate a new one"
    )
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert victim.read_text() == "not the node's\n"
    if key.is_dir():
        assert stat.S_IMODE(key.stat().st_mode) == 0o755


async def test_a_symlinked_identity_directory_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    # The directory was followed: the node's key was written into the link's target and the
    # target chmodded 0700 (a shared directory of another program, say).
    victim = tmp_path / "shared"
    victim.mkdir(mode=0o755)
    victim.chmod(0o755)
    (tmp_path / "node").mkdir()
    identity = tmp_path / "node" / "identity"
    identity.symlink_to(victim)
    code, err = await signalbox_exit(
        "dataplane", "identity", "request", "--data-dir", str(tmp_path / "node"), "--node-id", "n1"
    )
    assert code == 1, err
    assert err.splitlines() == [
        f"identity request: {identity}: a symbolic link; the node keeps its identity in a directory "
        "of its own (replace the link with the real directory)"
    ]
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755
    assert list(victim.iterdir()) == []


async def test_a_csr_out_path_it_cannot_write_is_one_line_and_leaves_no_copy(tmp_path: Path) -> None:
    # --out naming a directory, or a file in a missing one, was a traceback; the directory
    # case also left the CSR in <dir>.tmp beside it.
    taken = tmp_path / "csrs"
    taken.mkdir()
    node = ("dataplane", "identity", "request", "--data-dir", str(tmp_path / "node"), "--node-id", "n1")
    for out, reason in (
        (taken, "Is a directory"),
        (tmp_path / "missing" / "n1.csr", "No such file or directory"),
    ):
        code, err = await signalbox_exit(*node, "--out", str(out))
        assert code == 1, err
        assert err.splitlines() == [f"identity request: --out {out}: {reason}; nothing was written"]
    assert sorted(await asyncio.to_thread(os.listdir, tmp_path)) == ["csrs", "node"]
    assert await asyncio.to_thread(os.listdir, taken) == []


@pytest.mark.parametrize("name", ["cert", "ca"])
def test_a_symlinked_certificate_or_ca_is_refused_by_name(tmp_path: Path, name: str) -> None:
    files = IdentityFiles(tmp_path / "identity")
    files.private_key()
    elsewhere = tmp_path / "elsewhere.pem"
    elsewhere.write_bytes(_self_signed_pem())
    elsewhere.chmod(0o644)
    getattr(files, name).symlink_to(elsewhere)
    expected = (
        f"{getattr(files, name)}: a symbolic link; the node keeps its identity in a directory of its own"
    )
    with pytest.raises(NodeIdentityError, match=re.escape(expected)):
        files.problem("n1")
    with pytest.raises(NodeIdentityError, match=re.escape(expected)):
        files.private_key()
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o644


def _self_signed_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "n1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("name", "problem"),
    [("cert", "no node certificate in {dir}"), ("ca", "{cert} was not issued by the CA in {ca}")],
)
def test_a_fifo_planted_as_the_certificate_or_ca_is_refused_without_waiting(
    tmp_path: Path, name: str, problem: str
) -> None:
    # Both were read with a blocking open: a FIFO there made the node wait for a writer.
    files = IdentityFiles(tmp_path / "identity")
    files.directory.mkdir(mode=0o700)
    if name == "ca":
        files.cert.write_bytes(_self_signed_pem())  # the CA is read once the certificate is
    os.mkfifo(getattr(files, name))
    assert files.problem("n1") == problem.format(dir=files.directory, cert=files.cert, ca=files.ca)


async def test_evidence_export_refuses_a_fifo_planted_as_the_ca_without_waiting(tmp_path: Path) -> None:
    # The export read the node CA with a blocking open: a FIFO there hung the command.
    files = IdentityFiles.under(tmp_path / "node")
    files.private_key()
    files.cert.write_bytes(_self_signed_pem())
    os.mkfifo(files.ca)
    code, err = await signalbox_exit(
        "dataplane", "evidence", "export", "--data-dir", str(tmp_path / "node"), "--out", str(tmp_path / "p"),
        timeout=30,
    )  # fmt: skip
    assert code == 1, err
    assert f"evidence export: {files.ca}: cannot be read: not a regular file; nothing was written" in err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("name", ["cert", "ca"])
def test_a_certificate_or_ca_with_a_damaged_version_is_a_problem_not_a_traceback(
    tmp_path: Path, name: str
) -> None:
    # cryptography raises InvalidVersion, which is no ValueError, for a certificate whose
    # version is not one X.509 knows: the node's start ended in a traceback.
    files = IdentityFiles(tmp_path / "identity")
    files.private_key()
    good = _self_signed_pem()
    der = bytearray(x509.load_pem_x509_certificate(good).public_bytes(serialization.Encoding.DER))
    at = der.index(bytes.fromhex("a003020102"))  # [0] EXPLICIT INTEGER 2 (v3)
    der[at + 4] = 0x34
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)) + b"-----END CERTIFICATE-----\n"
    files.cert.write_bytes(good if name == "ca" else pem)
    files.ca.write_bytes(pem if name == "ca" else good)
    problem = files.problem("n1")
    assert problem in (
        f"no node certificate in {files.directory}",
        f"{files.cert} was not issued by the CA in {files.ca}",
    )


async def test_identity_install_refuses_a_fifo_given_as_the_bundle_without_waiting(tmp_path: Path) -> None:
    # The bundle was read with a blocking open: a FIFO named as BUNDLE hung the command.
    bundle = tmp_path / "bundle.pem"
    os.mkfifo(bundle)
    data_dir = tmp_path / "node"
    code, err = await signalbox_exit(
        "dataplane", "identity", "install", str(bundle), "--data-dir", str(data_dir), "--node-id", "n1",
        timeout=30,
    )  # fmt: skip
    assert code == 1, err
    assert err.strip() == f"identity install: cannot read {bundle}: not a regular file; nothing was installed"
    assert not IdentityFiles.under(data_dir).cert.exists()


async def test_identity_show_of_a_certificate_naming_no_one_says_why_it_is_not_usable(tmp_path: Path) -> None:
    # A certificate without subject alternative names (not one `admin node certify` wrote) made
    # `identity show` a traceback (ExtensionNotFound) before it said why it is not usable.
    data_dir = tmp_path / "node"
    files = IdentityFiles.under(data_dir)
    files.private_key()
    files.cert.write_bytes(_self_signed_pem())
    files.ca.write_bytes(_self_signed_pem())
    code, err = await signalbox_exit(
        "dataplane", "identity", "show", "--data-dir", str(data_dir), "--node-id", "n1", timeout=30
    )
    assert code == 1, err
    assert "Traceback" not in err
