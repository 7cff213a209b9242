"""Secret references resolve only inside what the node's operator allows (an env prefix, a
credential directory), reads are bounded, and errors never carry a value or a pasted secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dataplane.config.model import SecretRef
from dataplane.errors import CredentialUnavailable
from dataplane.providers.credentials import (
    MAX_CREDENTIAL_BYTES,
    CredentialScope,
    describe,
    looks_like_secret,
)

PREFIX = "SIGNALBOX_CRED_"


@pytest.fixture
def scope(tmp_path: Path) -> CredentialScope:
    directory = tmp_path / "credentials"
    directory.mkdir()
    return CredentialScope(directory, PREFIX)


def test_no_reference_means_no_credential(scope: CredentialScope) -> None:
    assert scope.resolve(SecretRef()) is None


def test_env_var_inside_the_prefix_is_read_and_stripped(
    scope: CredentialScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGNALBOX_CRED_TEST_KEY", "  sk-live-123\n")
    assert scope.resolve(SecretRef(env="SIGNALBOX_CRED_TEST_KEY")) == "sk-live-123"


def test_env_var_outside_the_prefix_is_refused_even_when_set(
    scope: CredentialScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTHER_PROVIDER_KEY", "sk-other-provider")
    with pytest.raises(CredentialUnavailable, match="outside this node's credential env prefix") as info:
        scope.resolve(SecretRef(env="OTHER_PROVIDER_KEY"))
    assert "sk-other-provider" not in str(info.value)
    # The prefix alone names nothing.
    monkeypatch.setenv(PREFIX, "sk-bare-prefix")
    with pytest.raises(CredentialUnavailable, match="outside"):
        scope.resolve(SecretRef(env=PREFIX))


def test_an_operator_prefix_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_LLM_OPENAI", "sk-acme")
    assert CredentialScope(tmp_path, "ACME_LLM_").resolve(SecretRef(env="ACME_LLM_OPENAI")) == "sk-acme"
    with pytest.raises(CredentialUnavailable, match="outside"):
        CredentialScope(tmp_path).resolve(SecretRef(env="ACME_LLM_OPENAI"))


def test_missing_env_var_names_the_reference(scope: CredentialScope, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGNALBOX_CRED_MISSING", raising=False)
    with pytest.raises(CredentialUnavailable, match="SIGNALBOX_CRED_MISSING: not set or empty"):
        scope.resolve(SecretRef(env="SIGNALBOX_CRED_MISSING"))


def test_a_secret_pasted_as_the_env_name_is_never_repeated(scope: CredentialScope) -> None:
    pasted = "sk-proj-Abc123Def456Ghi789Jkl012"
    with pytest.raises(CredentialUnavailable) as info:
        scope.resolve(SecretRef(env=pasted))
    assert pasted not in str(info.value)
    assert "redacted" in str(info.value)
    assert pasted not in describe(SecretRef(env=pasted))
    assert describe(SecretRef(env="SIGNALBOX_CRED_OPENAI")) == "env SIGNALBOX_CRED_OPENAI"


def test_file_in_the_credential_dir_is_read_and_stripped(scope: CredentialScope) -> None:
    (scope.directory / "openai").mkdir()
    (scope.directory / "openai" / "key").write_text("sk-file-456\n")
    assert scope.resolve(SecretRef(file="openai/key")) == "sk-file-456"


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/etc/passwd", "relative"),
        ("../outside", "'..'"),
        ("a/../../outside", "'..'"),
        ("./key", "'.'"),
        ("a\\b", "relative"),
        ("a//b", "empty"),
    ],
)
def test_file_references_leaving_the_dir_by_name_are_refused(
    scope: CredentialScope, path: str, why: str
) -> None:
    (scope.directory.parent / "outside").write_text("not yours")
    with pytest.raises(CredentialUnavailable, match=why):
        scope.resolve(SecretRef(file=path))


def test_a_symlink_escaping_the_dir_is_refused(scope: CredentialScope) -> None:
    outside = scope.directory.parent / "host-secret"
    outside.write_text("sk-host-secret")
    (scope.directory / "link").symlink_to(outside)
    (scope.directory / "sub").symlink_to(scope.directory.parent)
    with pytest.raises(CredentialUnavailable, match="resolves outside") as info:
        scope.resolve(SecretRef(file="link"))
    assert "sk-host-secret" not in str(info.value)
    with pytest.raises(CredentialUnavailable, match="resolves outside"):
        scope.resolve(SecretRef(file="sub/host-secret"))


def test_a_symlink_inside_the_dir_is_followed(scope: CredentialScope) -> None:
    (scope.directory / "real").write_text("sk-inside")
    (scope.directory / "alias").symlink_to(scope.directory / "real")
    assert scope.resolve(SecretRef(file="alias")) == "sk-inside"


def test_only_regular_files_of_bounded_size_are_read(scope: CredentialScope) -> None:
    (scope.directory / "dir").mkdir()
    with pytest.raises(CredentialUnavailable, match="not a regular file"):
        scope.resolve(SecretRef(file="dir"))
    os.mkfifo(scope.directory / "fifo")
    with pytest.raises(CredentialUnavailable, match="not a regular file"):
        scope.resolve(SecretRef(file="fifo"))
    (scope.directory / "big").write_bytes(b"k" * (MAX_CREDENTIAL_BYTES + 1))
    with pytest.raises(CredentialUnavailable, match=f"larger than {MAX_CREDENTIAL_BYTES} bytes"):
        scope.resolve(SecretRef(file="big"))
    (scope.directory / "fits").write_bytes(b"k" * MAX_CREDENTIAL_BYTES)
    assert scope.resolve(SecretRef(file="fits")) == "k" * MAX_CREDENTIAL_BYTES


def test_missing_and_empty_files_name_the_path_not_the_value(scope: CredentialScope) -> None:
    with pytest.raises(CredentialUnavailable, match="nope"):
        scope.resolve(SecretRef(file="nope"))
    (scope.directory / "empty").write_text(" \n")
    with pytest.raises(CredentialUnavailable, match="empty"):
        scope.resolve(SecretRef(file="empty"))


def test_a_missing_credential_dir_makes_file_references_unusable(tmp_path: Path) -> None:
    with pytest.raises(CredentialUnavailable, match="cannot be found"):
        CredentialScope(tmp_path / "none").resolve(SecretRef(file="key"))


def test_env_wins_over_file(scope: CredentialScope, monkeypatch: pytest.MonkeyPatch) -> None:
    (scope.directory / "key").write_text("from-file")
    monkeypatch.setenv("SIGNALBOX_CRED_TEST_KEY", "from-env")
    assert scope.resolve(SecretRef(env="SIGNALBOX_CRED_TEST_KEY", file="key")) == "from-env"


@pytest.mark.parametrize(
    "value",
    [
        "sk-abc123",
        "ghp_0123456789abcdefghij",
        "AKIAIOSFODNN7EXAMPLE",
        "SIGNALBOX_CRED_ABC123DEF456GHI789JKL0",
        "eyJhbGciOiJIUzI1NiJ9",
        "Bearer abc",
        "abcdefghijklmnopqrstuvwxyzabcdefgh",
    ],
)
def test_secret_shaped_values_are_recognised(value: str) -> None:
    assert looks_like_secret(value)


@pytest.mark.parametrize(
    "value", ["SIGNALBOX_CRED_OPENAI_PROD", "openai/key", "2024-10-21", "gpt-4o-2024-08-06", "true", "v1"]
)
def test_names_and_settings_are_not_secrets(value: str) -> None:
    assert not looks_like_secret(value)
