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
from dataclasses import dataclass, field
from typing import Any

import yaml

from controlplane.db.models import GovernanceProfile
from controlplane.errors import InvalidArgument, NotFound, StoredSnapshotInvalid, clip, shown
from controlplane.limits import GOVERNANCE_DOCUMENT_BYTES
from controlplane.repositories import config as config_repo
from controlplane.repositories import governance as repo
from controlplane.services.base import Caller, UnitOfWork
from controlplane.services.policies import canonical_json, document_field
from dataplane.config.model import DataClass, Finding
from dataplane.errors import ProfileError
from dataplane.governance import detectors as _detectors  # noqa: F401  (registers the built-in detectors)
from dataplane.governance import profile as compiler
from dataplane.governance.enforce import replace_spans

FORMATS = ("json", "yaml")


def parse_document(text: str) -> str:
    """YAML or JSON text -> canonical JSON of a document that compiles (schema, detectors and
    their options, actions per stage); ``InvalidArgument`` naming the path inside
    ``document`` otherwise. CPU work on hostile text: call it off the event loop."""
    if not text.strip():
        raise InvalidArgument("document", "must not be empty")
    if len(text) > GOVERNANCE_DOCUMENT_BYTES or len(text.encode("utf-8", "surrogatepass")) > (
        GOVERNANCE_DOCUMENT_BYTES
    ):
        raise InvalidArgument("document", f"at most {GOVERNANCE_DOCUMENT_BYTES} bytes")
    try:
        document = compiler.parse_document(text)
        if not isinstance(document, dict):
            raise ProfileError("$", "a governance profile must be an object")
        compiler.compile_profile(document)
    except ProfileError as exc:
        raise InvalidArgument(document_field(exc.path), exc.problem) from exc
    try:
        return canonical_json(document)
    except (TypeError, ValueError) as exc:
        # YAML can express values JSON cannot (dates, sets, NaN).
        raise InvalidArgument("document", clip(f"not representable as JSON: {exc}", 300)) from exc


def pretty(document_json: str, fmt: str) -> str:
    """A canonical document printed one key per line (sorted), as JSON or YAML."""
    document = json.loads(document_json)
    if fmt == "yaml":
        return yaml.safe_dump(document, sort_keys=True, allow_unicode=True, default_flow_style=False)
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True, slots=True)
class RuleResult:
    """What one rule found in the text it ran on (the text as the rules before it left it)."""

    rule: str
    detector: str
    action: str
    spans: tuple[Finding, ...]
    effect: str


@dataclass(frozen=True, slots=True)
class TestResult:
    profile: GovernanceProfile | None
    """The profile that ran; None: none governs the tenant."""
    stage: compiler.Stage
    results: tuple[RuleResult, ...] = ()
    text: str = ""
    """The text as it would go on; "" when a rule blocked it."""
    blocked_by: str = ""
    data_class: DataClass = DataClass.UNSPECIFIED


@dataclass(slots=True)
class _Run:
    text: str
    results: list[RuleResult] = field(default_factory=list)
    blocked_by: str = ""
    data_class: DataClass = DataClass.UNSPECIFIED
    masked: dict[str, int] = field(default_factory=dict)


def run_rules(profile: compiler.CompiledProfile, stage: compiler.Stage, text: str) -> _Run:
    """Each rule of ``stage`` in order over ``text``, as the node's governance step applies them:
    redactions and mask placeholders change the text later rules see; a block ends the text."""
    run = _Run(text)
    rules = profile.input_rules if stage is compiler.Stage.INPUT else profile.output_rules
    for rule in rules:
        spans = tuple(rule.detector.find(run.text)) if not run.blocked_by else ()
        effect = ""
        if spans:
            if rule.action is compiler.Action.BLOCK:
                run.blocked_by = rule.name
                effect = f"blocked ({rule.status.name})"
            elif rule.action is compiler.Action.REDACT:
                run.text = replace_spans(run.text, spans, [rule.placeholder] * len(spans))
                effect = f"redacted {len(spans)} with {rule.placeholder}"
            elif rule.action is compiler.Action.MASK:
                first = run.masked.get(rule.label, 0) + 1
                run.masked[rule.label] = first + len(spans) - 1
                run.text = replace_spans(
                    run.text, spans, [f"[{rule.label}_{first + i}]" for i in range(len(spans))]
                )
                effect = f"masked {len(spans)} as [{rule.label}_n]"
            elif rule.action is compiler.Action.CLASSIFY:
                run.data_class = max(run.data_class, rule.data_class)
                effect = f"data class -> {rule.data_class.name.lower()}"
            else:
                effect = "flagged"
        elif run.blocked_by:
            effect = "not run (blocked before)"
        results = RuleResult(rule.name, rule.detector_name, rule.action.value, spans, effect)
        run.results.append(results)
    if run.blocked_by:
        run.text = ""
    return run


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
            which = compiler.Stage(stage or compiler.Stage.INPUT.value)
        except ValueError:
            raise InvalidArgument("stage", "must be input or output") from None
        row = await self.governing(tenant)
        if row is None:
            return TestResult(None, which, text=text)

        def work(stored: GovernanceProfile) -> _Run:
            compiled = compiler.compile_profile(
                json.loads(stored.document_json), version=stored.version, profile_id=str(stored.id)
            )
            return run_rules(compiled, which, text)

        # Detectors are built and run on the caller's text: CPU work, off the event loop.
        try:
            run = await asyncio.to_thread(work, row)
        except ProfileError as exc:
            # Stored when it compiled; this build's detectors no longer accept it.
            raise StoredSnapshotInvalid(f"{self._label(tenant)} v{row.version}", str(exc)) from exc
        return TestResult(row, which, tuple(run.results), run.text, run.blocked_by, run.data_class)
