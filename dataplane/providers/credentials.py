"""Resolving a provider's ``SecretRef`` to the credential value, once, when a snapshot is applied.

The value is read from the node's environment or a file (mounted secrets),
stripped of surrounding whitespace (files usually end with a newline). Errors
name the reference, never the value.
"""

from __future__ import annotations

import os
from pathlib import Path

from dataplane.config.model import SecretRef
from dataplane.errors import CredentialUnavailable


def resolve_credential(ref: SecretRef) -> str | None:
    """The credential ``ref`` points to; None when the provider has no credential configured.

    An env reference wins over a file reference when both are set. A missing,
    unreadable or empty secret raises ``CredentialUnavailable``.
    """
    if ref.env:
        value = os.environ.get(ref.env, "").strip()
        if not value:
            raise CredentialUnavailable(f"credential env var {ref.env!r} is not set or empty")
        return value
    if ref.file:
        try:
            value = Path(ref.file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialUnavailable(
                f"credential file {ref.file!r} cannot be read ({type(exc).__name__})"
            ) from exc
        if not value:
            raise CredentialUnavailable(f"credential file {ref.file!r} is empty")
        return value
    return None
