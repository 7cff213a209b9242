"""One deployment of one model at one provider: what the dispatcher tries."""

from __future__ import annotations

from dataclasses import dataclass, field

from dataplane.config.model import DeploymentConfig, ModelConfig, ProviderConfig


@dataclass(frozen=True, slots=True)
class Candidate:
    model: ModelConfig
    deployment: DeploymentConfig
    provider: ProviderConfig
    key: str = field(init=False, compare=False)
    """Identifies the deployment to the dispatcher's breakers, across snapshots
    (derived from the deployment once: it is looked up on every decision)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", deployment_key(self.deployment))

    @property
    def label(self) -> str:
        return f"{self.model.alias}@{self.provider.name or self.provider.id}"


def deployment_key(d: DeploymentConfig) -> str:
    return d.id or f"{d.provider_id}/{d.upstream_model}"
