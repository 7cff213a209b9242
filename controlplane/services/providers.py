"""Providers: upstream endpoints, with credentials only as references, or sealed to a node
group's key on the admin's machine (``dataplane.providers.sealing``): this control plane
stores and ships the ciphertext and has no key to open it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Provider
from controlplane.errors import AlreadyExists, InvalidArgument, NotFound, StillReferenced, clip, shown
from controlplane.repositories import config as repo
from controlplane.repositories import groups as group_repo
from controlplane.services.base import Caller, UnitOfWork, check_name, check_str_map
from dataplane.providers.credentials import env_name_problem, file_path_problem, looks_like_secret
from dataplane.providers.registry import adapter_types
from dataplane.providers.sealing import MAX_SEALED_BYTES, MIN_SEALED_BYTES
from dataplane.providers.sealing import VERSION as SEALED_VERSION
from dataplane.providers.sealing import key_id as sealing_key_id
from signalbox.api.config.v1 import snapshot_pb2

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
    credential_sealed: snapshot_pb2.SealedSecret | None = None
    """The credential sealed to a node group's key (checked against the group by the service)."""
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
        if self.credential_sealed is not None:
            _check_sealed_shape(self.credential_sealed)
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
        sealed = self.credential_sealed
        row.credential_sealed = None if sealed is None else sealed.SerializeToString(deterministic=True)
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
            row = Provider(id=uuid.uuid4())
            await _check_sealed_group(change.session, spec, row.id)
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
            await _check_sealed_group(change.session, spec, row.id)
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


def _check_sealed_shape(sealed: snapshot_pb2.SealedSecret) -> None:
    blob = sealed.ciphertext
    if not sealed.node_group:
        raise InvalidArgument(
            "provider.credential.sealed.node_group", "must name the node group it is sealed to"
        )
    if len(blob) > MAX_SEALED_BYTES:
        raise InvalidArgument(
            "provider.credential.sealed.ciphertext", f"must be at most {MAX_SEALED_BYTES} bytes"
        )
    if len(blob) < MIN_SEALED_BYTES or blob[:1] != SEALED_VERSION:
        raise InvalidArgument(
            "provider.credential.sealed.ciphertext", "is not a sealed credential (signalbox admin seals it)"
        )


async def _check_sealed_group(session: AsyncSession, spec: ProviderSpec, provider_id: uuid.UUID) -> None:
    """A sealed credential must be sealed to its group's current key (which cannot tell
    whether it was sealed for this provider: only the group's nodes can open it)."""
    sealed = spec.credential_sealed
    if sealed is None:
        return
    group = await group_repo.get(session, sealed.node_group)
    if group is None:
        raise NotFound("node group", sealed.node_group, field="provider.credential.sealed.node_group")
    if group.sealing_public_key is None:
        raise InvalidArgument(
            "provider.credential.sealed.node_group",
            f"node group {shown(group.name)} has no sealing key (signalbox admin group update --sealing-public-key)",
        )
    current = sealing_key_id(bytes(group.sealing_public_key))
    if sealed.key_id != current:
        raise InvalidArgument(
            "provider.credential.sealed.key_id",
            f"sealed to key {shown(sealed.key_id)}, node group {shown(group.name)} has key {current}: seal it again",
        )


def is_credential_name(name: str) -> bool:
    """Whether a setting or query parameter called ``name`` would carry a credential."""
    return any(word.lower() in CREDENTIAL_WORDS for word in _WORD_SPLIT.split(name) if word)


def check_base_url(url: str) -> None:
    """Refuse a base URL that is not http(s) or carries a credential; errors never echo the URL."""
    try:
        parts = urlsplit(url)
        netloc_ok = bool(parts.netloc) and parts.hostname is not None
        # Raises for a port that is not a number up to 65535: stored, the node's HTTP client
        # refused it on every request (UnsupportedProtocol), as the deployment's failure.
        port = parts.port
    except ValueError:
        raise InvalidArgument("provider.base_url", "must be an http:// or https:// URL") from None
    if port == 0:
        raise InvalidArgument("provider.base_url", "port must be 1-65535")
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
