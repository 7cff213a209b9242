"""The node's API-key hash key versions: the file format (the node's copy and the operator's
``--api-key-hash-key-file``), files of earlier versions, hostile files, and what a sync
message carries."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import pytest

from dataplane.config.model import Scope
from dataplane.snapshot.hash_key import (
    API_KEY_HASH_KEY_FILE,
    MAX_HASH_KEY_VERSIONS,
    HashKeys,
    decode_hash_keys,
    write_hash_key_file,
)
from dataplane.snapshot.lkg import SNAPSHOT_DIR
from dataplane.snapshot.store import SnapshotStore
from dataplane.snapshot.sync_client import _hash_keys
from dataplane.upstream import UpstreamClient
from signalbox.api.config.v1 import sync_pb2
from signalbox.shell.cli import main
from tests.helpers import signalbox_exit

# Fixed, not random: they appear in the parametrized test ids, which xdist workers must agree on.
ONE = bytes(range(32))
TWO = bytes(range(32, 64))


def test_every_version_round_trips_through_the_file(tmp_path: Path) -> None:
    keys = HashKeys({2: TWO, 1: ONE})
    path = tmp_path / "keys"
    write_hash_key_file(path, keys)
    assert path.stat().st_mode & 0o777 == 0o600
    assert decode_hash_keys(path.read_bytes(), "f") == keys
    assert keys.versions == (1, 2)
    assert keys.keys == (ONE, TWO)
    with pytest.raises(FileExistsError):
        write_hash_key_file(path, keys)
    assert ONE.hex() not in repr(keys)
    assert "by_version" not in repr(keys)


def test_files_of_earlier_versions_hold_version_1() -> None:
    assert decode_hash_keys(ONE, "node copy") == HashKeys({1: ONE})  # the raw 32 bytes
    assert decode_hash_keys(base64.b64encode(ONE) + b"\n", "export") == HashKeys({1: ONE})


def _entries(*entries: object) -> bytes:
    return json.dumps({"api_key_hash_keys": list(entries)}).encode()


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "f: not JSON (expected {'api_key_hash_keys': [...]})"),
        (b'{"keys": []}', "f: api_key_hash_keys: must be a non-empty list"),
        (_entries(), "f: api_key_hash_keys: must be a non-empty list"),
        (_entries({"version": 1}), "f: api_key_hash_keys[0]: must be an object with exactly version and key"),
        (_entries({"version": "1", "key": _b64(ONE)}), "f: api_key_hash_keys[0].version: must be a whole number"),
        (_entries({"version": True, "key": _b64(ONE)}), "f: api_key_hash_keys[0].version: must be a whole number"),
        (_entries({"version": 1, "key": 7}), "f: api_key_hash_keys[0].key: must be base64 text"),
        (_entries({"version": 1, "key": "!!"}), "f: api_key_hash_keys[0].key: must be base64 of 32 bytes"),
        (_entries({"version": 1, "key": _b64(ONE[:16])}), "f: api_key_hash_keys: version 1: 16 bytes, expected 32"),
        (_entries({"version": 0, "key": _b64(ONE)}), "f: api_key_hash_keys: version 0: must be 1..4294967295"),
        (
            _entries({"version": 1, "key": _b64(ONE)}, {"version": 1, "key": _b64(TWO)}),
            "f: api_key_hash_keys: version 1: given twice",
        ),
        (
            _entries(*({"version": v, "key": _b64(ONE)} for v in range(1, MAX_HASH_KEY_VERSIONS + 2))),
            f"f: api_key_hash_keys: {MAX_HASH_KEY_VERSIONS + 1} versions, at most {MAX_HASH_KEY_VERSIONS}",
        ),
        (b"{" + b" " * 5000 + b"}", "f: 5002 bytes, more than 4096"),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_naming_the_rule_and_never_a_key(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=r"^f: ") as refused:
        decode_hash_keys(raw, "f")
    assert str(refused.value) == message
    assert _b64(ONE) not in str(refused.value)
    assert _b64(ONE[:16]) not in str(refused.value)


def test_a_sync_message_carries_every_live_version_or_the_one_key_of_an_earlier_control_plane() -> None:
    message = sync_pb2.ServerMessage(api_key_hash_key=TWO)
    message.api_key_hash_keys.add(version=1, key=ONE)
    message.api_key_hash_keys.add(version=2, key=TWO)
    assert _hash_keys(message) == HashKeys({1: ONE, 2: TWO})
    assert _hash_keys(sync_pb2.ServerMessage(api_key_hash_key=ONE)) == HashKeys({1: ONE})
    assert _hash_keys(sync_pb2.ServerMessage()) is None
    bad = sync_pb2.ServerMessage()
    bad.api_key_hash_keys.add(version=1, key=ONE[:5])
    assert _hash_keys(bad) is None  # ignored (logged): the node keeps what it has


def test_serve_refuses_a_bad_file_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "hash-keys"
    bad.write_bytes(_entries({"version": 1, "key": _b64(ONE)}, {"version": 1, "key": _b64(TWO)}))
    args = ["dataplane", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "node")]
    assert main([*args, "--api-key-hash-key-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--api-key-hash-key-file: api_key_hash_keys: version 1: given twice" in err
    assert _b64(ONE) not in err
    assert _b64(TWO) not in err


def test_a_file_nested_past_the_parsers_depth_is_refused_as_not_json() -> None:
    # 4,096 bytes are enough to nest past json's recursion limit: RecursionError, no ValueError.
    nested = b'{"":' * 1024
    with pytest.raises(ValueError, match=r"^f: not JSON"):
        decode_hash_keys(nested, "f")


async def test_serve_refuses_a_fifo_or_a_deeply_nested_file_with_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    nested = tmp_path / "nested"
    nested.write_bytes(b'{"":' * 1024)
    for path, rule in ((fifo, "not a regular file"), (nested, "not JSON")):
        # A process of its own: a node that read a FIFO would wait for a writer forever.
        code, err = await signalbox_exit(
            "dataplane", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "node"),
            "--api-key-hash-key-file", str(path),
        )  # fmt: skip
        assert code == 2, err
        [line] = err.splitlines()
        assert line.startswith("--api-key-hash-key-file: ")
        assert rule in line


@pytest.mark.parametrize("plant", ["fifo", "directory"])
async def test_a_stored_copy_that_is_not_a_regular_file_is_logged_by_name_and_not_used(
    tmp_path: Path, plant: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Not a regular file, the node's copy of the versions refused the start with "[Errno 22]
    # not a regular file", naming no file; any other unreadable copy is logged and the control
    # plane's next sync sends the versions again.
    stored = tmp_path / SNAPSHOT_DIR / API_KEY_HASH_KEY_FILE
    stored.parent.mkdir(mode=0o700)
    if plant == "fifo":
        os.mkfifo(stored)
    else:
        stored.mkdir()
    with caplog.at_level(logging.ERROR, logger="signalbox.dataplane.config"):
        store = SnapshotStore(trusted={}, scope=Scope(), data_dir=tmp_path, client=UpstreamClient())
    try:
        assert store.api_key_hash_key_versions == ()
        assert f"API-key hash key versions not loaded: {stored}: not a regular file" in caplog.text
    finally:
        await store.aclose()
