"""Every file a data-plane node reads besides its evidence, fuzzed: the pinned snapshot (at
start, and replaced on disk while the node runs), the last-known-good, the high-water mark,
the learned trust set, the API-key hash key, the trust key, the node's key, certificate and
CA, the quota budgets, the TLS files; garbled, reshaped or replaced by special files.

Each is loaded by the node's own code, in process: it is taken as it was signed, or refused
with the node's error naming the file in one bounded line, or recovered from as documented;
never a traceback, a hang, or a snapshot other than the one signed. A few real ``signalbox
dataplane serve`` processes check the exit status and the one line on stderr."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.config.model import Scope
from dataplane.errors import SnapshotFileInvalid
from dataplane.files import atomic_write
from dataplane.identity import IdentityFiles, NodeIdentityError, urn
from dataplane.quota.local import BUDGETS_FILE, LocalLedger
from dataplane.snapshot.envelope import key_id_for, load_trust_keys
from dataplane.snapshot.hash_key import API_KEY_HASH_KEY_FILE, HashKeys
from dataplane.snapshot.lkg import HWM_FILE, LKG_FILE, SNAPSHOT_DIR
from dataplane.snapshot.pin_watch import PinWatcher
from dataplane.snapshot.store import SnapshotStore
from dataplane.snapshot.trust import TRUST_FILE
from dataplane.upstream import UpstreamClient
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.shell.cli import main
from signalbox.tls import ServerTls, TlsConfigError
from tests.dataplane.conftest import envelope, pinned_serve_args, snapshot, write_public_key
from tests.fuzz.conftest import _LoopThread
from tests.fuzz.mutations import LOADING_LIMIT_S, SPECIAL_KINDS, examples, hostile, plant, refusal_ok, within
from tests.helpers import signalbox_exit

NODE = "n1"
SCOPE = Scope(deployment="test")


def _pin(version: int, key: Ed25519PrivateKey, trusted: Ed25519PrivateKey | None = None) -> bytes:
    snap = snapshot(version, "http://127.0.0.1:1")
    if trusted is not None:
        public = trusted.public_key()
        snap.trusted_keys.add(
            key_id=key_id_for(public),
            ed25519_public_key=public.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
        )
    return envelope(snap, key).SerializeToString()


def _payload_sha(raw: bytes) -> bytes:
    env = snapshot_pb2.SignedEnvelope()
    env.ParseFromString(raw)
    return hashlib.sha256(env.payload).digest()


def _issued(
    subject: str,
    issuer: str,
    public: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    extension: x509.ExtensionType,
) -> bytes:
    now = datetime.now(UTC)
    builder = x509.CertificateBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)])
    )
    builder = builder.issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, issuer)]))
    builder = builder.public_key(public).serial_number(x509.random_serial_number())
    builder = builder.not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=30))
    cert = builder.add_extension(extension, critical=False).sign(signer, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def _certificates(files: IdentityFiles) -> None:
    """A node CA and a certificate it issued for the node's key, naming node ``NODE``."""
    public = files.private_key().public_key()  # (the identity directory made as the node makes it)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    files.ca.write_bytes(
        _issued(
            "node CA", "node CA", ca_key.public_key(), ca_key, x509.BasicConstraints(ca=True, path_length=0)
        )
    )
    node = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(urn("node", NODE))])
    files.cert.write_bytes(_issued(NODE, "node CA", public, ca_key, node))


@dataclass(frozen=True)
class World:
    """A node's data dir as a run left it (last-known-good v2 that taught it a second trust
    key, its mark, the API-key hash key, an identity), the trust key and pins."""

    root: Path
    key: Ed25519PrivateKey
    learned: Ed25519PrivateKey
    trust_key: Path
    pin: bytes
    """v3, signed by the operator's key."""
    newer: bytes
    """v4, signed by the learned key."""
    lkg: bytes

    @property
    def data_dir(self) -> Path:
        return self.root / "node"

    def snapshot_file(self, name: str) -> Path:
        return self.data_dir / SNAPSHOT_DIR / name


async def _store(data_dir: Path, trust_key: Path) -> SnapshotStore:
    return SnapshotStore(
        trusted=load_trust_keys([trust_key]), scope=SCOPE, data_dir=data_dir, client=UpstreamClient()
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("node-files")
    key, learned = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trust_key = write_public_key(root / "trust.pem", key)
    data_dir = root / "node"

    async def seed() -> None:
        store = await _store(data_dir, trust_key)
        try:
            env = snapshot_pb2.SignedEnvelope.FromString(_pin(2, key, trusted=learned))
            result = await store.apply(env)
            assert result.accepted, result.reason
        finally:
            await store.aclose()

    asyncio.run(seed())
    atomic_write(
        data_dir / SNAPSHOT_DIR / API_KEY_HASH_KEY_FILE, HashKeys({1: b"k" * 32, 2: b"j" * 32}).encode()
    )
    _certificates(IdentityFiles.under(data_dir))
    quota = data_dir / "quota"
    quota.mkdir(mode=0o700)
    (quota / BUDGETS_FILE).write_bytes(
        b'{"format": 1, "budgets": [{"tenant_id": "t-acme", "api_key_id": "", "kind": 3, '
        b'"window": "2026-01-01", "used": 120}]}'
    )
    return World(
        root,
        key,
        learned,
        trust_key,
        _pin(3, key),
        _pin(4, learned),
        (data_dir / SNAPSHOT_DIR / LKG_FILE).read_bytes(),
    )


@contextlib.contextmanager
def _copy(world: World) -> Iterator[World]:
    tmp = Path(tempfile.mkdtemp(prefix="node-files-fuzz-"))
    try:
        shutil.copytree(world.root, tmp / "w", symlinks=True)
        yield World(
            tmp / "w", world.key, world.learned, tmp / "w" / "trust.pem", world.pin, world.newer, world.lkg
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- the pin at start, and replaced on disk while the node runs ----


def _serve_pin(world: World, pin: Path) -> bytes | BaseException | None:
    """What a starting node serves from ``pin`` (its payload's SHA-256), or its refusal."""

    async def run(store: SnapshotStore) -> bytes | None:
        await store.load_pinned(pin)
        return store.require().config.payload_sha256

    return _with_store(world, run)


def _with_store(
    world: World, use: Callable[[SnapshotStore], Awaitable[bytes | None]]
) -> bytes | BaseException | None:
    """``use`` on a store started on ``world``'s data dir, closed afterwards; its refusal."""

    async def run() -> bytes | None:
        store = await _store(world.data_dir, world.trust_key)
        try:
            return await use(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(run())
    except SnapshotFileInvalid as exc:
        return exc


@settings(max_examples=examples(40))
@given(data=st.data())
def test_a_garbled_pin_at_start_is_refused_by_name_or_served_exactly_as_signed(
    world: World, data: st.DataObject
) -> None:
    bad = data.draw(hostile(world.pin), label="pin")
    with _copy(world) as w:
        pin = w.root / "site.snapshot"
        pin.write_bytes(bad)
        outcome = within(LOADING_LIMIT_S, lambda: _serve_pin(w, pin))
    if isinstance(outcome, BaseException):
        refusal_ok(outcome, pin)
    else:
        assert outcome == _payload_sha(world.pin)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def running(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, PinWatcher, Path]]:
    """A store serving pin v3, its pin watcher, the pin's path; on a loop of their own."""
    data_dir = tmp_path_factory.mktemp("running")
    pin = data_dir / "site.snapshot"
    pin.write_bytes(world.pin)
    trust_key = write_public_key(data_dir / "trust.pem", world.key)
    loop = _LoopThread()
    store = loop.run(_store(data_dir / "node", trust_key))
    watcher = PinWatcher(store, pin, interval=60)
    watcher.prime()
    loop.run(store.load_pinned(pin))
    try:
        yield loop, watcher, pin
    finally:
        loop.run(store.aclose())
        loop.close()


@settings(max_examples=examples(40))
@given(data=st.data())
def test_a_pin_replaced_by_garbled_bytes_while_running_keeps_the_node_serving(
    world: World, running: tuple[Any, PinWatcher, Path], data: st.DataObject
) -> None:
    loop, watcher, pin = running
    # The learned key is not trusted by this node: v4 is never taken, v3 always served.
    bad = data.draw(st.one_of(hostile(world.newer), hostile(world.pin)), label="pin")
    lines = _Lines()
    logger = logging.getLogger("signalbox.dataplane.config")
    logger.addHandler(lines)
    try:
        atomic_write(pin, bad)
        loop.run(watcher.poll())
    finally:
        logger.removeHandler(lines)
    store = watcher._store
    assert store.version == 3
    assert store.payload_sha256 == _payload_sha(world.pin)
    for line in lines.lines:
        assert len(line) <= 4000, f"a log line of {len(line)} characters"


# ---- the snapshot state files at start ----


def _restart(world: World) -> bytes | BaseException | None:
    """What a restarted node serves from its data dir, None (nothing), or its refusal."""

    async def run(store: SnapshotStore) -> bytes | None:
        for key_id in store.trust.state.keys:
            assert key_id in {key_id_for(world.key.public_key()), key_id_for(world.learned.public_key())}
        try:
            await store.load_last_known_good()
        except SnapshotFileInvalid:
            return None  # the node logs it and stays closed (UNAVAILABLE)
        return store.current.config.payload_sha256 if store.current else None

    return _with_store(world, run)


STATE_FILES = (LKG_FILE, HWM_FILE, TRUST_FILE, API_KEY_HASH_KEY_FILE)


def _document(raw: bytes) -> dict[str, Any] | None:
    import json

    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


@settings(max_examples=examples(40))
@given(name=st.sampled_from(STATE_FILES), data=st.data())
def test_a_garbled_snapshot_state_file_is_refused_by_name_or_the_signed_snapshot_is_served(
    world: World, name: str, data: st.DataObject
) -> None:
    valid = world.snapshot_file(name).read_bytes()
    bad = data.draw(hostile(valid, _document(valid)), label=name)
    with _copy(world) as w:
        target = w.snapshot_file(name)
        target.write_bytes(bad)
        outcome = within(LOADING_LIMIT_S, lambda: _restart(w))
    if isinstance(outcome, BaseException):
        refusal_ok(outcome, target)
    else:
        assert outcome in (None, _payload_sha(world.lkg))


# ---- the node's identity ----


def _identity(world: World) -> str | BaseException:
    files = IdentityFiles.under(world.data_dir)
    try:
        return files.problem(NODE)
    except NodeIdentityError as exc:
        return exc


def _show(world: World) -> int:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["dataplane", "identity", "show", "--data-dir", str(world.data_dir), "--node-id", NODE])
    assert "BEGIN" not in out.getvalue() + err.getvalue()
    return code


@settings(max_examples=examples(40))
@given(name=st.sampled_from(("key", "cert", "ca")), data=st.data())
def test_a_garbled_identity_file_is_refused_by_name_or_the_issued_identity_is_used(
    world: World, name: str, data: st.DataObject
) -> None:
    files = IdentityFiles.under(world.data_dir)
    valid = getattr(files, name).read_bytes()
    bad = data.draw(hostile(valid), label=name)
    with _copy(world) as w:
        copied = IdentityFiles.under(w.data_dir)
        target: Path = getattr(copied, name)
        target.write_bytes(bad)
        outcome = within(LOADING_LIMIT_S, lambda: _identity(w))
        if isinstance(outcome, BaseException):
            refusal_ok(outcome, target)
            assert "BEGIN" not in str(outcome)
        elif outcome == "":
            # Usable: exactly the certificate the CA issued, for the node's own key.
            assert copied.certificate() == files.certificate()
            assert copied.private_key().public_key() == files.private_key().public_key()
        within(LOADING_LIMIT_S, lambda: _show(w))


# ---- the quota budgets of an air-gapped node ----


def _ledger(world: World) -> LocalLedger:
    ledger = LocalLedger(lambda: None, world.data_dir / "quota")
    ledger.load()
    return ledger


@settings(max_examples=examples(30))
@given(data=st.data())
def test_a_garbled_budgets_file_is_set_aside_and_recounted(world: World, data: st.DataObject) -> None:
    path = world.data_dir / "quota" / BUDGETS_FILE
    valid = path.read_bytes()
    bad = data.draw(hostile(valid, _document(valid)), label="budgets")
    with _copy(world) as w:
        target = w.data_dir / "quota" / BUDGETS_FILE
        target.write_bytes(bad)
        within(LOADING_LIMIT_S, lambda: _ledger(w))
        # Recounted or read: the file is one a restart reads again.
        within(LOADING_LIMIT_S, lambda: _ledger(w))


# ---- special files in place of each file ----


def _tls(cert: Path, key: Path, ca: Path) -> object:
    return ServerTls(cert=cert, key=key, client_ca=ca).credentials("127.0.0.1:0")


Loader = Callable[[World, Path], object]


def _special_targets() -> dict[str, tuple[Callable[[World], Path], Loader, tuple[type[BaseException], ...]]]:
    ident = IdentityFiles.under
    snap = World.snapshot_file
    return {
        "pin": (lambda w: w.root / "site.snapshot", lambda w, p: _serve_pin(w, p), ()),
        **{name: (lambda w, n=name: snap(w, n), lambda w, p: _restart(w), ()) for name in STATE_FILES},
        "trust key": (lambda w: w.trust_key, lambda w, p: load_trust_keys([p]), (ValueError,)),
        "node key": (lambda w: ident(w.data_dir).key, lambda w, p: _identity(w), ()),
        "node certificate": (lambda w: ident(w.data_dir).cert, lambda w, p: _identity(w), ()),
        "node CA": (lambda w: ident(w.data_dir).ca, lambda w, p: _identity(w), ()),
        "budgets": (lambda w: w.data_dir / "quota" / BUDGETS_FILE, lambda w, p: _ledger(w), ()),
        "tls cert": (
            lambda w: w.root / "tls.crt",
            lambda w, p: _tls(p, ident(w.data_dir).key, ident(w.data_dir).ca),
            (TlsConfigError,),
        ),
        "tls client ca": (
            lambda w: w.root / "client-ca.pem",
            lambda w, p: _tls(ident(w.data_dir).cert, ident(w.data_dir).key, p),
            (TlsConfigError,),
        ),
    }


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
@pytest.mark.parametrize("which", list(_special_targets()))
def test_a_special_file_in_place_of_a_node_file_is_refused_by_name_without_waiting(
    world: World, which: str, kind: str
) -> None:
    where, load, raised = _special_targets()[which]
    with _copy(world) as w:
        target = where(w)
        plant(target, kind, 1024 * 1024 if kind != "oversized" else 256 * 1024 * 1024)
        try:
            outcome = within(LOADING_LIMIT_S, lambda: load(w, target), target)
        except raised as exc:
            outcome = exc
        if isinstance(outcome, BaseException):
            refusal_ok(outcome, target)


# ---- real processes: the exit status and the one line on stderr ----


def _plant_fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.mkfifo(path)


PROCESS_CASES: dict[str, tuple[Callable[[Path], Path], Callable[[Path, bytes], None]]] = {
    "truncated pin": (lambda d: d / "site.snapshot", lambda p, pin: p.write_bytes(pin[: len(pin) // 2])),
    "hwm not JSON": (lambda d: d / "node" / SNAPSHOT_DIR / HWM_FILE, lambda p, pin: p.write_bytes(b"{")),
    "trust.json nested": (
        lambda d: d / "node" / SNAPSHOT_DIR / TRUST_FILE,
        lambda p, pin: p.write_bytes(b'{"statements":' * 50_000),
    ),
    "node key garbled": (
        lambda d: d / "node" / "identity" / "node.key",
        lambda p, pin: p.write_bytes(b"-----"),
    ),
}


@pytest.mark.parametrize("case", list(PROCESS_CASES))
async def test_serve_refuses_a_hostile_file_with_one_line_naming_it(
    tmp_path: Path, signing_key: Ed25519PrivateKey, case: str
) -> None:
    trust_key = write_public_key(tmp_path / "trust.pem", signing_key)
    snap = snapshot(3, "http://127.0.0.1:1", deployment="")
    snap.providers[0].location = snapshot_pb2.PROVIDER_LOCATION_SITE
    snap.providers[0].site = "lab"
    pin_bytes = envelope(snap, signing_key).SerializeToString()
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(pin_bytes)
    where, spoil = PROCESS_CASES[case]
    target = where(tmp_path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    spoil(target, pin_bytes)
    code, err = await signalbox_exit(*pinned_serve_args(pin, trust_key, tmp_path / "node"), timeout=30)
    assert code == 1, err
    [line] = err.splitlines()
    assert line.startswith("signalbox dataplane serve: "), line
    assert str(target) in line, line
