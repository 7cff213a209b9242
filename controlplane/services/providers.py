"""Providers: upstream endpoints, with credentials only as references."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from controlplane.db.models import Provider
from controlplane.errors import AlreadyExists, InvalidArgument, NotFound, StillReferenced, clip, shown
from controlplane.repositories import config as repo
from controlplane.services.base import Caller, UnitOfWork, check_name, check_str_map
from dataplane.providers.credentials import env_name_problem, file_path_problem, looks_like_secret
from dataplane.providers.registry import adapter_types

# Settings and base URLs travel in snapshots in the clear, so a credential must never be
# one. A setting's name, or a URL's query parameter name, is split into words (on
# ``_``, ``-``, ``.`` and camelCase); any of these words marks it as a credential.
CREDENTIAL_WORDS = frozenset(
    {
        "token",
        "key",
        "apikey",
        "auth",
        "authorization",
        "secret",
        "password",
        "passwd",
        "pwd",
        "credential",
        "credentials",
        "bearer",
        "signature",
        "sig",
        "cookie",
        "session",
    }
)
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
LOCATIONS = range(0, 4)


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """A provider as the admin describes it."""

    name: str
    type: str
    base_url: str = ""
    credential_env: str = ""
    """Name of the environment variable holding the credential on the node."""
    credential_file: str = ""
    """Path of the file holding the credential on the node."""
    settings: dict[str, str] = field(default_factory=dict)
    timeout_ms: int = 0
    location: int = 0
    site: str = ""
    region: str = ""
    jurisdiction: str = ""

    def validate(self) -> None:
        check_name("provider.name", self.name)
        known = adapter_types()
        if self.type not in known:
            raise InvalidArgument(
                "provider.type",
                f"unknown provider type {shown(self.type)} (known: {', '.join(sorted(known))})",
            )
        if self.base_url:
            check_base_url(self.base_url)
        if self.credential_env and self.credential_file:
            raise InvalidArgument("provider.credential", "set either env or file, not both")
        # Shape only: which prefix and directory a node allows is that node's own
        # setting (--credential-env-prefix, --credential-dir), unknown here.
        if self.credential_env:
            problem = env_name_problem(self.credential_env)
            if problem:
                raise InvalidArgument("provider.credential.env", problem)
        if self.credential_file:
            problem = file_path_problem(self.credential_file)
            if problem:
                raise InvalidArgument("provider.credential.file", problem)
        if self.location not in LOCATIONS:
            raise InvalidArgument("provider.location", f"unknown location {self.location}")
        check_str_map("provider.settings", self.settings)
        for key, value in self.settings.items():
            if is_credential_name(key):
                raise InvalidArgument(
                    f"provider.settings.{clip(key)}",
                    "looks like a credential; give it as credential (an env var or file on the node)",
                )
            if looks_like_secret(value):
                raise InvalidArgument(
                    f"provider.settings.{key}",
                    "its value looks like a credential; give it as credential (an env var or file on the node)",
                )

    def apply_to(self, row: Provider) -> None:
        row.name = self.name
        row.type = self.type
        row.base_url = self.base_url
        row.credential_env = self.credential_env
        row.credential_file = self.credential_file
        row.settings = dict(self.settings)
        row.timeout_ms = self.timeout_ms
        row.location = self.location
        row.site = self.site
        row.region = self.region
        row.jurisdiction = self.jurisdiction


@dataclass(slots=True)
class ProviderService:
    uow: UnitOfWork

    async def create(self, caller: Caller, spec: ProviderSpec) -> tuple[Provider, int]:
        spec.validate()
        async with self.uow.change(caller, f"create provider {spec.name}") as change:
            if await repo.get_provider(change.session, spec.name) is not None:
                raise AlreadyExists("provider", spec.name)
            row = Provider()
            spec.apply_to(row)
            change.session.add(row)
        return row, change.version

    async def list(self) -> Sequence[Provider]:
        async with self.uow.read() as session:
            return await repo.list_providers(session)

    async def update(self, caller: Caller, ref: str, spec: ProviderSpec) -> tuple[Provider, int]:
        """Replace the provider addressed by ``ref`` (id or name) with ``spec``."""
        spec.validate()
        async with self.uow.change(caller, f"update provider {ref}") as change:
            row = await repo.get_provider(change.session, ref)
            if row is None:
                raise NotFound("provider", ref)
            if spec.name != row.name:
                other = await repo.get_provider(change.session, spec.name)
                if other is not None and other.id != row.id:
                    raise AlreadyExists("provider", spec.name)
            spec.apply_to(row)
        return row, change.version

    async def delete(self, caller: Caller, ref: str) -> int:
        async with self.uow.change(caller, f"delete provider {ref}") as change:
            row = await repo.get_provider(change.session, ref)
            if row is None:
                raise NotFound("provider", ref)
            users = await repo.models_using_provider(change.session, row.id)
            if users:
                raise StillReferenced(
                    f"provider {row.name!r}", "model " + ", ".join(repr(alias) for alias in users)
                )
            await change.session.delete(row)
        return change.version


def is_credential_name(name: str) -> bool:
    """Whether a setting or query parameter called ``name`` would carry a credential."""
    return any(word.lower() in CREDENTIAL_WORDS for word in _WORD_SPLIT.split(name) if word)


def check_base_url(url: str) -> None:
    """Refuse a base URL that is not http(s) or carries a credential; errors never echo the URL."""
    try:
        parts = urlsplit(url)
        netloc_ok = bool(parts.netloc) and parts.hostname is not None
    except ValueError:
        raise InvalidArgument("provider.base_url", "must be an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not netloc_ok:
        raise InvalidArgument("provider.base_url", "must be an http:// or https:// URL")
    if parts.username or parts.password or "@" in parts.netloc:
        raise InvalidArgument(
            "provider.base_url", "must not carry credentials (user:password@); use credential"
        )
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if is_credential_name(name) or looks_like_secret(value):
            raise InvalidArgument(
                "provider.base_url", "must not carry credentials in its query; use credential"
            )
    if any(looks_like_secret(unquote(segment)) for segment in (*parts.path.split("/"), parts.fragment)):
        raise InvalidArgument("provider.base_url", "must not carry credentials in its path; use credential")
