"""Secret references resolve from env vars and files, and never leak their value in errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataplane.config.model import SecretRef
from dataplane.errors import CredentialUnavailable
from dataplane.providers.credentials import resolve_credential


def test_no_reference_means_no_credential() -> None:
    assert resolve_credential(SecretRef()) is None


def test_env_var_is_read_and_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNALBOX_TEST_KEY", "  sk-live-123\n")
    assert resolve_credential(SecretRef(env="SIGNALBOX_TEST_KEY")) == "sk-live-123"


def test_missing_env_var_names_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGNALBOX_TEST_MISSING", raising=False)
    with pytest.raises(CredentialUnavailable, match="SIGNALBOX_TEST_MISSING"):
        resolve_credential(SecretRef(env="SIGNALBOX_TEST_MISSING"))


def test_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("sk-file-456\n")
    assert resolve_credential(SecretRef(file=str(secret))) == "sk-file-456"


def test_missing_and_empty_files_name_the_path_not_the_value(tmp_path: Path) -> None:
    with pytest.raises(CredentialUnavailable, match="nope"):
        resolve_credential(SecretRef(file=str(tmp_path / "nope")))
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    with pytest.raises(CredentialUnavailable, match="empty"):
        resolve_credential(SecretRef(file=str(empty)))


def test_env_wins_over_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("from-file")
    monkeypatch.setenv("SIGNALBOX_TEST_KEY", "from-env")
    assert resolve_credential(SecretRef(env="SIGNALBOX_TEST_KEY", file=str(secret))) == "from-env"
