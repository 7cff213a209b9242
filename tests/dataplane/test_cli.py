"""``signalbox dataplane verify`` in process, ``signalbox dataplane serve`` as a real process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.shell.cli import main
from signalbox.shell.simulator import Simulator
from tests.dataplane.conftest import AUTH, chat, envelope, pinned_serve_args, snapshot, write_public_key
from tests.helpers import signalbox_exit


def _pin(tmp_path: Path, key: Ed25519PrivateKey, base_url: str, version: int = 3, **credential: str) -> Path:
    """An air-gapped site's pin: the upstream is inside site "lab"."""
    snap = snapshot(version, base_url, deployment="", **credential)
    snap.providers[0].location = snapshot_pb2.PROVIDER_LOCATION_SITE
    snap.providers[0].site = "lab"
    path = tmp_path / "site.snapshot"
    path.write_bytes(envelope(snap, key).SerializeToString())
    return path


def test_verify_prints_version_and_hash(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    pin = _pin(tmp_path, signing_key, "http://127.0.0.1:1")
    assert main(["dataplane", "verify", "--snapshot", str(pin), "--trust-key", str(trust_key)]) == 0
    out = capsys.readouterr().out
    assert "version: 3" in out
    assert re.search(r"sha256: [0-9a-f]{64}", out)


def test_verify_fails_with_the_reason(
    tmp_path: Path, trust_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pin = _pin(tmp_path, Ed25519PrivateKey.generate(), "http://127.0.0.1:1")
    assert main(["dataplane", "verify", "--snapshot", str(pin), "--trust-key", str(trust_key)]) == 1
    assert "no signature by a trusted key" in capsys.readouterr().out


async def test_serve_pinned_snapshot_then_sigterm_exits_cleanly(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    pin = _pin(tmp_path, signing_key, simulator.base_url)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalbox",
        *pinned_serve_args(pin, trust_key, tmp_path / "node", "--node-id", "node-cli"),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        address = ""
        while not address:
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            assert line, "node exited before it listened"
            if match := re.search(r"listening on (\S+),", line):
                address = match.group(1)
        async with grpc.aio.insecure_channel(address) as channel:
            response = await infer_pb2_grpc.InferServiceStub(channel).Infer(chat(), metadata=AUTH, timeout=10)
        assert response.snapshot_version == 3
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_trust_keys_come_from_the_environment_when_no_flag_is_given(
    tmp_path: Path,
    trust_key: Path,
    signing_key: Ed25519PrivateKey,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pin = _pin(tmp_path, signing_key, "http://127.0.0.1:1")
    other = write_public_key(tmp_path / "other.pem", Ed25519PrivateKey.generate())
    monkeypatch.setenv("SIGNALBOX_TRUST_KEY", f"{other},{trust_key}")
    assert main(["dataplane", "verify", "--snapshot", str(pin)]) == 0
    assert "version: 3" in capsys.readouterr().out


def test_verify_refuses_a_trust_file_nested_past_the_parsers_depth(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    # json raises RecursionError, no ValueError, for deep nesting: it was a traceback.
    pin = _pin(tmp_path, signing_key, "http://127.0.0.1:1")
    snap_dir = tmp_path / "node" / "snapshot"
    snap_dir.mkdir(parents=True, mode=0o700)
    (snap_dir / "trust.json").write_bytes(b'{"statements":' * 100_000)
    args = ["dataplane", "verify", "--snapshot", str(pin), "--trust-key", str(trust_key)]
    assert main([*args, "--data-dir", str(tmp_path / "node")]) == 1
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"INVALID {pin}: {snap_dir / 'trust.json'}: not JSON")


async def test_serve_refuses_a_pin_that_is_a_fifo_instead_of_waiting_for_a_writer(
    tmp_path: Path, trust_key: Path
) -> None:
    pin = tmp_path / "site.snapshot"
    os.mkfifo(pin)
    code, err = await signalbox_exit(*pinned_serve_args(pin, trust_key, tmp_path / "node"))
    assert code == 1, err
    assert f"signalbox dataplane serve: {pin}: cannot be read: not a regular file" in err


@pytest.mark.parametrize("flag", ["--credential-env-prefix", "--credential-dir"])
async def test_serve_reads_credentials_only_where_the_operator_flags_say(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, flag: str
) -> None:
    upstream_key = "sk-upstream-known-to-the-operator-only"
    credentials = tmp_path / "operator-creds"
    credentials.mkdir()
    (credentials / "sim.key").write_text(upstream_key)
    ref = (
        {"credential_env": "ACME_LLM_SIM"}
        if flag == "--credential-env-prefix"
        else {"credential_file": "sim.key"}
    )
    value = "ACME_LLM_" if flag == "--credential-env-prefix" else str(credentials)
    async with Simulator(api_key=upstream_key) as upstream:
        pin = _pin(tmp_path, signing_key, upstream.base_url, **ref)
        environment = {**os.environ, "ACME_LLM_SIM": upstream_key}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "signalbox",
            *pinned_serve_args(pin, trust_key, tmp_path / "node", flag, value),
            env=environment,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stderr is not None
        try:
            address = ""
            while not address:
                line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
                assert line, "node exited before it listened"
                assert "unusable" not in line, line
                if match := re.search(r"listening on (\S+),", line):
                    address = match.group(1)
            async with grpc.aio.insecure_channel(address) as channel:
                stub = infer_pb2_grpc.InferServiceStub(channel)
                response = await stub.Infer(chat(), metadata=AUTH, timeout=10)
            assert response.snapshot_version == 3
            assert upstream.stats_json()["total"] == 1
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 30) == 0


def test_serve_refuses_a_credential_prefix_that_is_not_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataplane", "serve", "--credential-env-prefix", "acme-"]) == 2
    assert "--credential-env-prefix: must be an environment variable name" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_serve_refuses_an_idle_wait_that_is_not_a_number_of_seconds(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dataplane", "serve", "--snapshot-idle-wait-seconds", value]) == 2
    assert "--snapshot-idle-wait-seconds: " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "rule"),
    [
        ("--http-max-connections", "0", "is not a positive count"),
        ("--http-max-connections", "-3", "is not a positive count"),
        ("--grpc-max-connections", "0", "is not a positive count"),
        ("--http-max-connections-per-peer", "0", "is not a positive count"),
        ("--grpc-max-connections-per-peer", "-1", "is not a count (0 or more)"),
        ("--evidence-checkpoint-records", "0", "is not a positive count"),
        ("--evidence-checkpoint-ms", "0", "is not a positive number of milliseconds"),
        ("--evidence-ship-ms", "0", "is not a positive number of milliseconds"),
        ("--evidence-ship-ms", "-20", "is not a positive number of milliseconds"),
        ("--evidence-drain-ms", "-1", "is not 0 or a positive number of milliseconds"),
        ("--evidence-segment-bytes", "0", "is not a positive number of bytes"),
        ("--evidence-spool-max-bytes", "-1", "is not a positive number of bytes"),
        ("--default-timeout", "0", "is not a positive number of seconds"),
        ("--default-timeout", "nan", "is not a positive number of seconds"),
        ("--stream-timeout", "-5", "is not a positive number of seconds"),
        ("--stream-timeout", "inf", "is not a positive number of seconds"),
        ("--drain-seconds", "nan", "is not a number of seconds >= 0"),
        ("--drain-seconds", "-1", "is not a number of seconds >= 0"),
        ("--drain-seconds", "inf", "is not a number of seconds >= 0"),
    ],
)
def test_serve_refuses_counts_and_sizes_that_make_no_sense(
    flag: str, value: str, rule: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dataplane", "serve", flag, value]) == 2
    assert f"{flag}: {value} {rule}" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--sealing-key", "--enroll-token-file"])
async def test_serve_refuses_a_flag_file_that_is_a_fifo_instead_of_waiting_for_a_writer(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, flag: str
) -> None:
    # Both were read whole with a blocking open: a FIFO named by mistake hung the start.
    pin = _pin(tmp_path, signing_key, "http://127.0.0.1:1")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, err = await signalbox_exit(*pinned_serve_args(pin, trust_key, tmp_path / "node", flag, str(fifo)))
    assert code == 2, err
    assert f"{flag}: cannot read {fifo}: not a regular file" in err


async def test_serve_refuses_a_trust_key_that_is_a_fifo_instead_of_waiting_for_a_writer(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    pin = _pin(tmp_path, signing_key, "http://127.0.0.1:1")
    fifo = tmp_path / "trust.fifo"
    os.mkfifo(fifo)
    code, err = await signalbox_exit(*pinned_serve_args(pin, fifo, tmp_path / "node"))
    assert code != 0, err
    assert f"trust key {fifo}: cannot be read as a PEM public key" in err
    assert "not a regular file" in err


async def test_verify_refuses_a_snapshot_that_is_a_fifo_instead_of_waiting_for_a_writer(
    tmp_path: Path, trust_key: Path
) -> None:
    fifo = tmp_path / "site.snapshot"
    os.mkfifo(fifo)
    code, err = await signalbox_exit(
        "dataplane", "verify", "--snapshot", str(fifo), "--trust-key", str(trust_key)
    )
    assert code == 1, err


@pytest.mark.parametrize("name", ["trust.json", "hwm.json"])
async def test_serve_refuses_a_snapshot_state_file_that_is_a_fifo_instead_of_waiting_for_a_writer(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, name: str
) -> None:
    # The learned trust set and the high-water mark were read whole with a blocking open: a
    # FIFO planted in the node's snapshot directory hung the start.
    pin = _pin(tmp_path, signing_key, "http://127.0.0.1:1")
    snap_dir = tmp_path / "node" / "snapshot"
    snap_dir.mkdir(parents=True, mode=0o700)
    os.mkfifo(snap_dir / name)
    code, err = await signalbox_exit(*pinned_serve_args(pin, trust_key, tmp_path / "node"), timeout=30)
    assert code == 1, err
    assert f"{snap_dir / name}: " in err
    assert "not a regular file" in err
