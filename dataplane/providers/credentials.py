"""Resolving a provider's ``SecretRef`` to the credential value, once, when a snapshot is applied.

A snapshot is written by admins, but the credential lives on the node: an admin
must not be able to make the node read an arbitrary variable or file and send it
to an endpoint of the admin's choosing. So the node's operator restricts what a
reference may name (``CredentialScope``):

- an env reference must be a variable name (``[A-Z_][A-Z0-9_]*``) that starts
  with the operator's prefix (``--credential-env-prefix``, default
  ``SIGNALBOX_CRED_``);
- a file reference must be a relative path without ``..`` inside the operator's
  credential directory (``--credential-dir``, default ``<data_dir>/credentials``).
  The path is resolved (symlinks followed) and must stay inside the directory;
  the last component is opened with ``O_NOFOLLOW``; it must be a regular file
  of at most ``MAX_CREDENTIAL_BYTES``.

A credential sealed to a node group's key is opened with the node's sealing key
(``--sealing-key``), when the snapshot is applied: it must be sealed to this node's group,
and to the key the node holds (``dataplane.providers.sealing``).

A reference outside them raises ``CredentialUnavailable``; the provider is then
unusable on this node. The value is stripped of surrounding whitespace (files
usually end with a newline). Errors name the reference only when it has the shape
of a name (a secret pasted as the "name" is never repeated), and never the value.
Those errors are for the node's operator (its log); callers only ever see a
generic "provider credentials unavailable".
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dataplane.config.model import SealedRef, SecretRef
from dataplane.errors import CredentialUnavailable
from dataplane.files import read_regular
from dataplane.providers.sealing import SealingError, aad, open_sealed, public_bytes
from dataplane.providers.sealing import key_id as sealing_key_id

DEFAULT_ENV_PREFIX = "SIGNALBOX_CRED_"
CREDENTIALS_DIR_NAME = "credentials"
"""The default credential directory's name under the node's data dir."""
MAX_CREDENTIAL_BYTES = 64 * 1024
MAX_REFERENCE_CHARS = 256

ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")
FILE_PART_RE = re.compile(r"[A-Za-z0-9._-]+")
_KNOWN_SECRET_PREFIX = re.compile(
    r"^(sk|pk|rk)[-_]|^(xox[abposr]|ghp|gho|ghs|ghu|github_pat|glpat|hf)[-_]|^AKIA|^ASIA|^AIza|^ya29\.|^eyJ|^bearer\s",
    re.IGNORECASE,
)
_RUN = re.compile(r"[A-Za-z0-9]{20,}")


def looks_like_secret(value: str) -> bool:
    """Whether ``value`` looks like a credential rather than a name, a setting or a URL part.

    A heuristic on purpose (shared with the control plane's guard): a well-known
    token prefix (``sk-``, ``ghp_``, ``AKIA``, ``AIza``, a JWT's ``eyJ``, ...), a
    run of 20 or more letters and digits mixing both, or any run of 32 or more.
    Names made of words (``SIGNALBOX_CRED_OPENAI_PROD``) pass.
    """
    if _KNOWN_SECRET_PREFIX.search(value):
        return True
    for run in _RUN.findall(value):
        if len(run) >= 32:
            return True
        if any(c.isdigit() for c in run) and any(c.isalpha() for c in run):
            return True
    return False


def env_name_problem(name: str) -> str:
    """Why ``name`` is not an acceptable env reference, as a phrase; "" when it is (shape only)."""
    if len(name) > MAX_REFERENCE_CHARS:
        return f"must be at most {MAX_REFERENCE_CHARS} characters"
    if looks_like_secret(name):
        return "looks like a credential itself; give the name of the variable holding it"
    if not ENV_NAME_RE.fullmatch(name):
        return "must be an environment variable name ([A-Z_][A-Z0-9_]*)"
    return ""


def file_path_problem(path: str) -> str:
    """Why ``path`` is not an acceptable file reference, as a phrase; "" when it is (shape only)."""
    if len(path) > MAX_REFERENCE_CHARS:
        return f"must be at most {MAX_REFERENCE_CHARS} characters"
    if looks_like_secret(path):
        return "looks like a credential itself; give the path of the file holding it"
    if path.startswith("/") or "\\" in path:
        return "must be a path relative to the node's credential directory"
    for part in path.split("/"):
        if not part:
            return "must not have empty components"
        if part in (".", ".."):
            return "must not contain '.' or '..' components"
        if not FILE_PART_RE.fullmatch(part):
            return "may contain only letters, digits, '.', '_', '-' and '/'"
    return ""


def describe(ref: SecretRef) -> str:
    """The reference for an operator's log: its name when it has the shape of one, else redacted."""
    if ref.sealed is not None:
        return f"sealed to node group {ref.sealed.node_group[:64]!r} (key {ref.sealed.key_id[:16]!r})"
    if ref.env:
        if env_name_problem(ref.env):
            return f"env <redacted, {len(ref.env)} characters>"
        return f"env {ref.env}"
    if ref.file:
        if file_path_problem(ref.file):
            return f"file <redacted, {len(ref.file)} characters>"
        return f"file {ref.file}"
    return "none"


@dataclass(frozen=True, slots=True)
class CredentialScope:
    """What this node's operator lets snapshots reference; ``resolve`` reads a reference under it."""

    directory: Path
    """File references are relative to this directory and must stay inside it."""
    env_prefix: str = DEFAULT_ENV_PREFIX
    """Env references must start with this (and be longer than it)."""
    sealing_key: X25519PrivateKey | None = field(default=None, repr=False)
    """Opens credentials sealed to this node's group (``--sealing-key``); None: none held."""

    def resolve(self, ref: SecretRef) -> str | None:
        """The credential ``ref`` points to; None when the provider has no credential configured.

        An env reference wins over a file reference when both are set. A reference
        outside this scope, or a missing, unreadable, oversized or empty secret,
        raises ``CredentialUnavailable`` (the message is for operators).
        """
        if ref.sealed is not None:
            return self._sealed(ref.sealed, describe(ref))
        if ref.env:
            return self._env(ref)
        if ref.file:
            return self._file(ref)
        return None

    def _sealed(self, sealed: SealedRef, where: str) -> str:
        if sealed.node_group != sealed.snapshot_group:
            raise CredentialUnavailable(
                f"credential {where}: this node is in node group {sealed.snapshot_group!r}; "
                "seal the credential to that group's key"
            )
        if self.sealing_key is None:
            raise CredentialUnavailable(f"credential {where}: this node has no sealing key (--sealing-key)")
        held = sealing_key_id(public_bytes(self.sealing_key))
        if sealed.key_id != held:
            raise CredentialUnavailable(f"credential {where}: this node's sealing key is {held!r}")
        try:
            value = open_sealed(
                self.sealing_key, sealed.ciphertext, aad(sealed.node_group, sealed.provider_id)
            )
        except SealingError as exc:
            raise CredentialUnavailable(f"credential {where}: {exc}") from None
        try:
            text = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise CredentialUnavailable(f"credential {where}: not UTF-8 text") from None
        if not text:
            raise CredentialUnavailable(f"credential {where}: empty")
        return text

    def _env(self, ref: SecretRef) -> str:
        name = ref.env
        where = describe(ref)
        if env_name_problem(name):
            raise CredentialUnavailable(f"credential {where}: not a variable name")
        if not name.startswith(self.env_prefix) or len(name) == len(self.env_prefix):
            raise CredentialUnavailable(
                f"credential {where}: outside this node's credential env prefix {self.env_prefix!r}"
            )
        value = os.environ.get(name, "").strip()
        if not value:
            raise CredentialUnavailable(f"credential {where}: not set or empty")
        return value

    def _file(self, ref: SecretRef) -> str:
        where = describe(ref)
        problem = file_path_problem(ref.file)
        if problem:
            raise CredentialUnavailable(f"credential {where}: {problem}")
        try:
            root = self.directory.resolve(strict=True)
            path = (root / ref.file).resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise CredentialUnavailable(
                f"credential {where}: cannot be found in this node's credential directory "
                f"({type(exc).__name__})"
            ) from exc
        if not path.is_relative_to(root) or path == root:
            raise CredentialUnavailable(
                f"credential {where}: resolves outside this node's credential directory"
            )
        return _read_bounded(path, where)


def _read_bounded(path: Path, where: str) -> str:
    """Read a regular file of at most ``MAX_CREDENTIAL_BYTES``, never following a final symlink."""
    try:
        data = read_regular(path, MAX_CREDENTIAL_BYTES, nofollow=True)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EFBIG):  # not a regular file, or too large
            raise CredentialUnavailable(f"credential {where}: {exc.strerror}") from exc
        raise CredentialUnavailable(f"credential {where}: cannot be opened ({type(exc).__name__})") from exc
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise CredentialUnavailable(f"credential {where}: not UTF-8 text") from exc
    if not value:
        raise CredentialUnavailable(f"credential {where}: empty")
    return value
