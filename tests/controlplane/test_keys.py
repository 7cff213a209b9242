"""The KEK sources and the sealed signing key."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.session import create_engine, session_factory
from controlplane.errors import InvalidArgument, SigningKeyUnavailable
from controlplane.keys import KEK_FILE_NAME, Kek, ensure_signing_key, load_kek


def test_kek_from_environment_value(tmp_path: Path) -> None:
    raw = bytes(range(32))
    kek = load_kek(kek_b64=base64.b64encode(raw).decode(), kek_file=None, data_dir=tmp_path)
    assert kek.key == raw
    assert not (tmp_path / KEK_FILE_NAME).exists()
    assert raw.hex() not in repr(kek)


def test_kek_from_file(tmp_path: Path) -> None:
    path = tmp_path / "kek.b64"
    path.write_text(base64.b64encode(b"k" * 32).decode() + "\n")
    assert load_kek(kek_b64=None, kek_file=path, data_dir=tmp_path).key == b"k" * 32


def test_generated_kek_file_is_private_and_reused(tmp_path: Path) -> None:
    first = load_kek(kek_b64=None, kek_file=None, data_dir=tmp_path)
    mode = stat.S_IMODE((tmp_path / KEK_FILE_NAME).stat().st_mode)
    assert mode == 0o600
    assert load_kek(kek_b64=None, kek_file=None, data_dir=tmp_path) == first


def test_the_kek_directory_is_private_and_an_older_kek_file_is_narrowed(tmp_path: Path) -> None:
    data_dir = tmp_path / "cp"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    first = load_kek(kek_b64=None, kek_file=None, data_dir=data_dir)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    (data_dir / KEK_FILE_NAME).chmod(0o644)  # written by an older version
    assert load_kek(kek_b64=None, kek_file=None, data_dir=data_dir) == first
    assert stat.S_IMODE((data_dir / KEK_FILE_NAME).stat().st_mode) == 0o600


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_bad_kek_is_invalid(tmp_path: Path, value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_kek(kek_b64=value, kek_file=None, data_dir=tmp_path)
    assert info.value.field == "--kek (SIGNALBOX_KEK)"
    assert value not in str(info.value)


async def _signer(database_url: str, kek: Kek) -> str:
    engine = create_engine(database_url)
    try:
        sessions = session_factory(engine)
        session: AsyncSession
        async with sessions() as session, session.begin():
            return (await ensure_signing_key(session, kek)).key_id
    finally:
        await engine.dispose()


async def test_signing_key_is_generated_once_and_needs_the_same_kek(database_url: str) -> None:
    kek = Kek(b"a" * 32)
    key_id = await _signer(database_url, kek)
    assert await _signer(database_url, kek) == key_id
    with pytest.raises(SigningKeyUnavailable):
        await _signer(database_url, Kek(b"b" * 32))


def test_a_kek_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    # It was opened blocking: the control plane waited forever for a writer.
    fifo = tmp_path / "kek.fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidArgument) as info:
        load_kek(kek_b64=None, kek_file=fifo, data_dir=tmp_path / "cp")
    assert info.value.field == "--kek-file (SIGNALBOX_KEK_FILE)"
    assert "not a regular file" in str(info.value)


def test_a_symlink_planted_as_the_generated_kek_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    # The generated file's mode was narrowed with a chmod that followed a link, to a file
    # anywhere, and that file's bytes then became the KEK.
    data_dir = tmp_path / "cp"
    data_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text(base64.b64encode(b"v" * 32).decode())
    victim.chmod(0o644)
    (data_dir / KEK_FILE_NAME).symlink_to(victim)
    with pytest.raises(InvalidArgument) as info:
        load_kek(kek_b64=None, kek_file=None, data_dir=data_dir)
    assert info.value.field == str(data_dir / KEK_FILE_NAME)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
