"""One applied snapshot as requests use it: the compiled config, its route table, and an
adapter per usable provider, built once per apply, off the request path.

A request takes ``store.current`` once and runs to the end on it; the old adapters are
closed when its last request finishes (``ServingState.use``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dataplane.config.model import RuntimeConfig, SecretRef
from dataplane.providers.base import ProviderAdapter
from dataplane.providers.credentials import describe
from dataplane.providers.registry import build_adapter
from dataplane.routing.table import RouteTable
from dataplane.upstream import UpstreamClient

log = logging.getLogger("signalbox.dataplane.config")

CredentialResolver = Callable[[SecretRef], "str | None"]

MAX_UNUSABLE_LOGGED = 20
"""Providers named one by one in the log when a snapshot is applied; the rest are counted."""
MAX_REASON_CHARS = 300


@dataclass(eq=False, slots=True)
class ServingState:
    """One applied snapshot: the compiled config, its route table and an adapter per usable provider.

    Immutable once published, except for the in-flight counter that tells the
    store when the last request on a retired state has finished.
    """

    config: RuntimeConfig
    routes: RouteTable
    """The snapshot's routes prepared for this node (its mode and site)."""
    adapters: Mapping[str, ProviderAdapter]
    """Keyed by provider id."""
    unusable: Mapping[str, str]
    """Provider id -> why it cannot be used (e.g. its credential is missing)."""
    key_id: str
    """The trust key whose signature verified."""
    applied_at: float
    _inflight: int = 0
    _retired: bool = False
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def version(self) -> int:
        return self.config.version

    def use(self) -> ServingState:
        """Hold this state for one request (``with state.use():``), so its adapters outlive
        the request. The state is its own context manager: no generator made per request."""
        return self

    def __enter__(self) -> ServingState:
        self._inflight += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._inflight -= 1
        if self._retired and self._inflight == 0:
            self._idle.set()

    def _retire(self) -> None:
        self._retired = True
        if self._inflight == 0:
            self._idle.set()


def build_state(
    config: RuntimeConfig,
    routes: RouteTable,
    key_id: str,
    *,
    resolve: CredentialResolver,
    client: UpstreamClient,
    clock: Callable[[], float],
) -> ServingState:
    """The serving state of an applied snapshot: an adapter per provider that can be set up,
    the reason for each that cannot (logged here, once per apply)."""
    adapters: dict[str, ProviderAdapter] = {}
    unusable: dict[str, str] = {}
    for provider in config.providers.values():
        # A provider that cannot be set up must not take the node down: it is
        # marked unusable and requests routed to it get a generic error. The
        # reasons are for the operator (this log, once per apply): they name
        # references (sanitized by ``describe``), never values, and callers
        # never see them.
        try:
            credential = resolve(provider.credential) if provider.credential else None
        except Exception as exc:
            unusable[provider.id] = bounded(f"credential cannot be resolved: {exc}")
            continue
        if provider.credential and credential is None:
            unusable[provider.id] = (
                f"credential ({describe(provider.credential)}) is not available on this node"
            )
            continue
        try:
            adapters[provider.id] = build_adapter(provider, client, credential)
        except Exception as exc:
            unusable[provider.id] = bounded(f"adapter cannot be built: {type(exc).__name__}: {exc}")
    for i, (provider_id, why) in enumerate(unusable.items()):
        if i == MAX_UNUSABLE_LOGGED:
            log.warning(
                "%d more providers unusable in snapshot %d",
                len(unusable) - MAX_UNUSABLE_LOGGED,
                config.version,
            )
            break
        name = config.providers[provider_id].name
        log.warning(
            "provider %s (%s) unusable in snapshot %d: %s",
            bounded(name, 64),
            provider_id,
            config.version,
            why,
        )
    return ServingState(config, routes, adapters, unusable, key_id, clock())


async def close_adapters(state: ServingState) -> None:
    for provider_id, adapter in state.adapters.items():
        try:
            await adapter.aclose()
        except Exception:
            log.exception("closing adapter of provider %s failed", provider_id)


def bounded(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` on one line, without control characters, cut at ``limit`` characters."""
    clean = "".join(c if c.isprintable() else " " for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."
