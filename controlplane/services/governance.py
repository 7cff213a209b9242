"""Governance profiles: every version kept, the newest one per tenant (and the platform
default) in the snapshot; applied only if it compiles exactly as a node compiles it.

Versioning mirrors routing policies (``services/policies.py``): a version is never
reused, a deletion is a version of its own, and ``get`` with version 0 is the current one.

``test`` runs a profile over a text without a model, for ``signalbox admin governance
test``: what each rule found (positions and kinds, never the values) and did.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import yaml

from controlplane.db.models import GovernanceProfile
from controlplane.errors import InvalidArgument, NotFound, StoredSnapshotInvalid, shown
from controlplane.limits import GOVERNANCE_DOCUMENT_BYTES
from controlplane.repositories import config as config_repo
from controlplane.repositories import governance as repo
from controlplane.services.base import Caller, UnitOfWork
from controlplane.services.policies import checked_document
from dataplane.chat import ChatRequest, ChatResponse, FinishReason, Message, Role, TextPart
from dataplane.config.model import Action, CompiledProfile, DataClass, Rule, Stage
from dataplane.errors import ProfileError
from dataplane.governance import detectors as _detectors  # noqa: F401  (registers the built-in detectors)
from dataplane.governance import profile as compiler
from dataplane.governance.contract import Contracts
from dataplane.governance.enforce import RequestGovernor
from dataplane.governance.errors import Blocked, BlockedInvalid, OverLimit

FORMATS = ("json", "yaml")


def parse_document(text: str) -> str:
    """YAML or JSON text -> canonical JSON of a document that compiles (schema, detectors and
    their options, actions per stage); ``InvalidArgument`` naming the path inside
    ``document`` otherwise. CPU work on hostile text: call it off the event loop."""
    if len(text) > GOVERNANCE_DOCUMENT_BYTES or len(text.encode("utf-8", "surrogatepass")) > (
        GOVERNANCE_DOCUMENT_BYTES
    ):
        raise InvalidArgument("document", f"at most {GOVERNANCE_DOCUMENT_BYTES} bytes")
    return checked_document(
        text, compiler.parse_document, compiler.compile_profile, ProfileError, "governance profile"
    )


def pretty(document_json: str, fmt: str) -> str:
    """A canonical document printed one key per line (sorted), as JSON or YAML."""
    document = json.loads(document_json)
    if fmt == "yaml":
        return yaml.safe_dump(document, sort_keys=True, allow_unicode=True, default_flow_style=False)
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True, slots=True)
class Position:
    start: int
    end: int
    kind: str


@dataclass(frozen=True, slots=True)
class RuleResult:
    """What one rule (or limit) found in the text as the rules before it left it, and did."""

    rule: str
    detector: str
    action: str
    count: int
    positions: tuple[Position, ...]
    """At most the node's evidence cap of them (``count`` is all)."""
    effect: str


@dataclass(frozen=True, slots=True)
class TestResult:
    profile: GovernanceProfile | None
    """The profile that ran; None: none governs the tenant."""
    stage: Stage
    results: tuple[RuleResult, ...] = ()
    text: str = ""
    """The text as it would go on; "" when refused."""
    blocked_by: str = ""
    """The rule (or ``limits.<name>``) that refused it; "" when none did."""
    data_class: DataClass = DataClass.UNSPECIFIED


def _effect(rule: Rule, count: int) -> str:
    if rule.action is Action.BLOCK:
        return f"blocked ({rule.status.name})"
    if rule.action is Action.REDACT:
        return f"redacted {count} with {rule.placeholder}"
    if rule.action is Action.MASK:
        return f"masked {count} as [{rule.label}_n]"
    if rule.action is Action.CLASSIFY:
        return f"data class -> {rule.data_class.name.lower()}"
    return "flagged"


def run_profile(profile: CompiledProfile, stage: Stage, text: str) -> TestResult:
    """``text`` through ``profile``'s rules of ``stage`` exactly as a node governs a request
    carrying it as one user message (input) or an answer (output), with the node's own
    ``RequestGovernor``: what it records as evidence becomes the report."""
    governor = RequestGovernor(profile, Contracts())
    actions: list[dict[str, Any]] = []
    refused = ""
    out = ""
    try:
        if stage is Stage.INPUT:
            request = ChatRequest(messages=(Message(Role.USER, (TextPart(text),)),))
            body = governor.govern_input(request, actions)
            out = body.messages[0].text if isinstance(body, ChatRequest) else text
        else:
            answer = ChatResponse(Message(Role.ASSISTANT, (TextPart(text),)), FinishReason.STOP)
            out = governor.govern_output(answer, actions).message.text
    except (Blocked, BlockedInvalid) as exc:
        refused = exc.rule
    except OverLimit as exc:
        refused = f"limits.{exc.limit}"
    recorded = {str(a["rule"]): a for a in actions}
    results: list[RuleResult] = []
    if refused.startswith("limits."):
        limit = recorded[refused]
        effect = f"refused: {limit['count']} over the limit of {limit['limit']}"
        results.append(RuleResult(refused, "", Action.BLOCK.value, int(limit["count"]), (), effect))
    after_refusal = bool(refused)
    for rule in profile.input_rules if stage is Stage.INPUT else profile.output_rules:
        entry = recorded.get(rule.name)
        if entry is None:
            effect = "not run (refused before)" if after_refusal else ""
            results.append(RuleResult(rule.name, rule.detector_name, rule.action.value, 0, (), effect))
            continue
        count = int(entry["count"])
        positions = tuple(Position(p["start"], p["end"], p["kind"]) for p in entry["positions"])
        results.append(
            RuleResult(
                rule.name, rule.detector_name, rule.action.value, count, positions, _effect(rule, count)
            )
        )
        after_refusal = after_refusal or rule.name == refused
    return TestResult(None, stage, tuple(results), "" if refused else out, refused, governor.data_class)


@dataclass(slots=True)
class GovernanceService:
    uow: UnitOfWork

    async def _tenant_id(self, session: Any, tenant: str) -> uuid.UUID | None:
        if not tenant:
            return None
        row = await config_repo.get_tenant(session, tenant)
        if row is None:
            raise NotFound("tenant", tenant, field="tenant")
        return row.id

    @staticmethod
    def _label(tenant: str) -> str:
        return f"governance profile of {shown(tenant)}" if tenant else "platform default governance profile"

    async def apply(self, caller: Caller, *, tenant: str, document: str) -> tuple[GovernanceProfile, int]:
        """Store a new version if the document compiles and so does the config with it;
        otherwise store nothing."""
        document_json = await asyncio.to_thread(parse_document, document)
        async with self.uow.change(caller, f"apply governance profile {tenant or '(default)'}") as change:
            tenant_id = await self._tenant_id(change.session, tenant)
            latest = await repo.latest(change.session, tenant_id)
            row = GovernanceProfile(
                tenant_id=tenant_id,
                version=(latest.version if latest is not None else 0) + 1,
                document_json=document_json,
                deleted=False,
                created_by=caller.actor,
            )
            change.session.add(row)
        return row, change.version

    async def get(self, tenant: str, version: int = 0) -> GovernanceProfile:
        history = await self.history(tenant)
        if version:
            for row in history:
                if row.version == version and not row.deleted:
                    return row
            raise NotFound(self._label(tenant), f"version {version}")
        if not history or history[-1].deleted:
            raise NotFound(self._label(tenant), "current")
        return history[-1]

    async def history(self, tenant: str) -> Sequence[GovernanceProfile]:
        async with self.uow.read() as session:
            return await repo.history(session, await self._tenant_id(session, tenant))

    async def diff(self, tenant: str, from_version: int, to_version: int, fmt: str) -> tuple[int, int, str]:
        """A unified diff of two stored versions' documents (0: the version before ``to``
        that has a document; the current one)."""
        fmt = fmt or "json"
        if fmt not in FORMATS:
            raise InvalidArgument("format", f"must be one of {', '.join(FORMATS)}")
        newer = await self.get(tenant, to_version)
        if from_version:
            older = await self.get(tenant, from_version)
        else:
            earlier = [r for r in await self.history(tenant) if r.version < newer.version and not r.deleted]
            if not earlier:
                raise NotFound(self._label(tenant), f"a version before {newer.version}")
            older = earlier[-1]
        name = f"governance profile of {tenant}" if tenant else "platform default governance profile"
        text = "".join(
            difflib.unified_diff(
                pretty(older.document_json, fmt).splitlines(keepends=True),
                pretty(newer.document_json, fmt).splitlines(keepends=True),
                fromfile=f"{name} v{older.version}",
                tofile=f"{name} v{newer.version}",
            )
        )
        return older.version, newer.version, text

    async def delete(self, caller: Caller, tenant: str) -> int:
        """Record a deletion as a new version; earlier versions stay in the history."""
        async with self.uow.change(caller, f"delete governance profile {tenant or '(default)'}") as change:
            tenant_id = await self._tenant_id(change.session, tenant)
            latest = await repo.latest(change.session, tenant_id)
            if latest is None or latest.deleted:
                raise NotFound(self._label(tenant), "current")
            change.session.add(
                GovernanceProfile(
                    tenant_id=tenant_id,
                    version=latest.version + 1,
                    document_json="{}",
                    deleted=True,
                    created_by=caller.actor,
                )
            )
        return change.version

    async def governing(self, tenant: str) -> GovernanceProfile | None:
        """The profile that governs ``tenant``: its own current version, else the platform
        default's; None when neither exists."""
        async with self.uow.read() as session:
            tenant_id = await self._tenant_id(session, tenant)
            own = await repo.latest(session, tenant_id) if tenant_id is not None else None
            if own is not None and not own.deleted:
                return own
            default = await repo.latest(session, None)
        return default if default is not None and not default.deleted else None

    async def test(self, tenant: str, text: str, stage: str) -> TestResult:
        """Run the profile governing ``tenant`` over ``text`` (``stage``: input or output)."""
        try:
            which = Stage(stage or Stage.INPUT.value)
        except ValueError:
            raise InvalidArgument("stage", "must be input or output") from None
        row = await self.governing(tenant)
        if row is None:
            return TestResult(None, which, text=text)

        def work(stored: GovernanceProfile) -> TestResult:
            compiled = compiler.compile_profile(
                json.loads(stored.document_json), version=stored.version, profile_id=str(stored.id)
            )
            return run_profile(compiled, which, text)

        # Detectors are built and run on the caller's text: CPU work, off the event loop.
        try:
            result = await asyncio.to_thread(work, row)
        except ProfileError as exc:
            # Stored when it compiled; this build's detectors no longer accept it.
            raise StoredSnapshotInvalid(f"{self._label(tenant)} v{row.version}", str(exc)) from exc
        return replace(result, profile=row)
