"""The model registry and its deployments."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from controlplane.db.models import Deployment, Model
from controlplane.errors import (
    AlreadyExists,
    ConfigRejected,
    InvalidArgument,
    NotFound,
    StillReferenced,
    shown,
)
from controlplane.repositories import config as repo
from controlplane.services.base import Caller, Change, UnitOfWork, check_name, check_str_map
from dataplane.routing.query import AUTO_MODEL
from signalbox.api.common.v1 import common_pb2

CAPABILITIES = frozenset(v for v in common_pb2.Capability.values() if v)
CLASSIFICATIONS = frozenset(v for v in common_pb2.DataClassification.values() if v)


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    provider: str
    """Provider id or name."""
    upstream_model: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model as the admin describes it."""

    alias: str
    deployments: tuple[DeploymentSpec, ...]
    capabilities: tuple[int, ...] = ()
    context_window: int = 0
    max_output_tokens: int = 0
    input_price_nanos_per_mtok: int = 0
    output_price_nanos_per_mtok: int = 0
    cached_input_price_nanos_per_mtok: int = 0
    certified_for: tuple[int, ...] = ()
    certifications: tuple[str, ...] = ()
    typical_latency_ms: int = 0
    attributes: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        check_name("model.alias", self.alias)
        if self.alias == AUTO_MODEL:
            raise InvalidArgument(
                "model.alias", f'"{AUTO_MODEL}" is reserved: a request for it is the policy\'s choice'
            )
        if not self.deployments:
            raise InvalidArgument("model.deployments", "a model needs at least one deployment")
        for i, d in enumerate(self.deployments):
            if not d.provider:
                raise InvalidArgument(f"model.deployments[{i}].provider", "must not be empty")
            if not d.upstream_model:
                raise InvalidArgument(f"model.deployments[{i}].upstream_model", "must not be empty")
            if d.weight < 0:
                raise InvalidArgument(f"model.deployments[{i}].weight", "must not be negative")
        for i, c in enumerate(self.capabilities):
            if c not in CAPABILITIES:
                raise InvalidArgument(f"model.capabilities[{i}]", f"unknown capability {c}")
        for i, c in enumerate(self.certified_for):
            if c not in CLASSIFICATIONS:
                raise InvalidArgument(f"model.certified_for[{i}]", f"unknown data classification {c}")
        for name in (
            "input_price_nanos_per_mtok",
            "output_price_nanos_per_mtok",
            "cached_input_price_nanos_per_mtok",
        ):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"model.{name}", "must not be negative")
        check_str_map("model.attributes", self.attributes)


async def _apply(change: Change, spec: ModelSpec, row: Model) -> None:
    deployments = []
    first: dict[tuple[uuid.UUID, str], int] = {}
    for i, d in enumerate(spec.deployments):
        provider = await repo.get_provider(change.session, d.provider)
        if provider is None:
            raise NotFound("provider", d.provider, field=f"model.deployments[{i}].provider")
        # Resolved first, so a provider named once by id and once by name is one provider.
        # Twice stored, one deployment got twice its weight, a fallback retrying what had
        # just failed, and a circuit breaker split in two.
        earlier = first.setdefault((provider.id, d.upstream_model), i)
        if earlier != i:
            raise InvalidArgument(
                f"model.deployments[{i}]",
                f"the same provider and upstream model as model.deployments[{earlier}]; "
                "give that one more weight instead",
            )
        deployments.append(
            Deployment(
                provider_id=provider.id, upstream_model=d.upstream_model, weight=d.weight or 1, position=i
            )
        )
    row.alias = spec.alias
    row.capabilities = sorted(set(spec.capabilities))
    row.context_window = spec.context_window
    row.max_output_tokens = spec.max_output_tokens
    row.input_price_nanos_per_mtok = spec.input_price_nanos_per_mtok
    row.output_price_nanos_per_mtok = spec.output_price_nanos_per_mtok
    row.cached_input_price_nanos_per_mtok = spec.cached_input_price_nanos_per_mtok
    row.certified_for = sorted(set(spec.certified_for))
    row.certifications = list(spec.certifications)
    row.typical_latency_ms = spec.typical_latency_ms
    row.attributes = dict(spec.attributes)
    row.deployments = deployments


@dataclass(slots=True)
class ModelService:
    uow: UnitOfWork

    async def create(self, caller: Caller, spec: ModelSpec) -> tuple[Model, int]:
        spec.validate()
        async with self.uow.change(caller, f"create model {spec.alias}") as change:
            if await repo.get_model(change.session, spec.alias) is not None:
                raise AlreadyExists("model", spec.alias)
            row = Model(deployments=[])
            await _apply(change, spec, row)
            change.session.add(row)
        return row, change.version

    async def list(self) -> Sequence[Model]:
        async with self.uow.read() as session:
            return await repo.list_models(session)

    async def update(self, caller: Caller, ref: str, spec: ModelSpec) -> tuple[Model, int]:
        """Replace the model addressed by ``ref`` (id or alias), deployments included."""
        spec.validate()
        async with self.uow.change(caller, f"update model {ref}") as change:
            row = await repo.get_model(change.session, ref)
            if row is None:
                raise NotFound("model", ref)
            if spec.alias != row.alias:
                other = await repo.get_model(change.session, spec.alias)
                if other is not None and other.id != row.id:
                    raise AlreadyExists("model", spec.alias)
            await _apply(change, spec, row)
        return row, change.version

    async def delete(self, caller: Caller, ref: str) -> int:
        try:
            async with self.uow.change(caller, f"delete model {ref}") as change:
                row = await repo.get_model(change.session, ref)
                if row is None:
                    raise NotFound("model", ref)
                await change.session.delete(row)
        except ConfigRejected as exc:
            # The only way removing a model breaks the config is something naming it.
            raise StillReferenced(f"model {shown(ref)}", exc.referrer or exc.field) from exc
        return change.version
