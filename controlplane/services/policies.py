"""Routing policies: every version kept, the newest one per tenant in the snapshot."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from controlplane.db.models import Policy
from controlplane.errors import ConfigRejected, InvalidArgument, NotFound, clip, shown
from controlplane.repositories import config as repo
from controlplane.services.base import Caller, UnitOfWork
from dataplane.errors import PolicyError, ProfileError
from dataplane.policy import language

_DOCUMENT_PATH = re.compile(r"^\$\.policies\[\d+\]\.document")


def canonical_json(document: Any) -> str:
    """Sorted keys, no whitespace: equal documents are equal strings."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def parse_document(text: str) -> str:
    """YAML or JSON text (JSON is YAML) -> canonical JSON of a document valid under the
    published schema. Whether its models exist and its weights make sense is checked
    by compiling the snapshot that would carry it (``UnitOfWork.change``)."""
    return checked_document(
        text, language.parse_document, language.validate_document, PolicyError, "policy document"
    )


DocumentError = TypeVar("DocumentError", PolicyError, ProfileError)


def checked_document(
    text: str,
    parse: Callable[[str], Any],
    check: Callable[[dict[str, Any]], object],
    error: type[DocumentError],
    what: str,
) -> str:
    """``text`` parsed and checked (``error`` names the path of a problem) -> canonical JSON;
    the one way admins' documents (policies, governance profiles) become stored text."""
    if not text.strip():
        raise InvalidArgument("document", "must not be empty")
    try:
        document = parse(text)
        if not isinstance(document, dict):
            raise error("$", f"a {what} must be an object")
        _check_unicode(document, error)
        check(document)
    except error as exc:
        raise InvalidArgument(document_field(exc.path), exc.problem) from exc
    try:
        return canonical_json(document)
    except (TypeError, ValueError) as exc:
        # YAML can express values JSON cannot (dates, sets, NaN).
        raise InvalidArgument("document", clip(f"not representable as JSON: {exc}", 300)) from exc


def _check_unicode(document: dict[str, Any], error: type[DocumentError]) -> None:
    """JSON (``\\ud800``) and YAML (``"\\ud800"``) can escape a lone surrogate, which is no
    Unicode text: no UTF-8 column, snapshot or node can hold it. Refused at its path (a
    key's, at the object holding it), before the schema echoes it. Without recursion: the
    parser bounds the depth, not Python's stack."""
    stack: list[tuple[Any, str]] = [(document, "$")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            items: list[tuple[Any, str]] = []
            for key, child in value.items():
                _check_text(key, path, error)
                items.append((child, f"{path}.{clip(str(key))}"))
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(child, f"{path}[{i}]") for i, child in enumerate(value)]))
        else:
            _check_text(value, path, error)


def _check_text(value: Any, path: str, error: type[DocumentError]) -> None:
    if not isinstance(value, str):
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        raise error(path, f"lone surrogate \\u{code:04x} is not valid Unicode") from None


def document_field(path: str) -> str:
    """A JSON path inside a policy (``$.rules[0].weights``) as the request field naming it."""
    return "document" + path.removeprefix("$")


@dataclass(slots=True)
class PolicyService:
    uow: UnitOfWork

    async def _tenant_id(self, session: Any, tenant: str) -> uuid.UUID | None:
        if not tenant:
            return None
        row = await repo.get_tenant(session, tenant)
        if row is None:
            raise NotFound("tenant", tenant)
        return row.id

    async def apply(self, caller: Caller, *, tenant: str, document: str) -> tuple[Policy, int]:
        """Store a new version if the config with it compiles; otherwise store nothing."""
        # Parsing and schema validation are CPU work on hostile text: off the event loop,
        # so other admin calls and the sync streams go on meanwhile.
        document_json = await asyncio.to_thread(parse_document, document)
        try:
            async with self.uow.change(caller, f"apply policy {tenant or '(default)'}") as change:
                tenant_id = await self._tenant_id(change.session, tenant)
                latest = await repo.latest_policy(change.session, tenant_id)
                row = Policy(
                    tenant_id=tenant_id,
                    version=(latest.version if latest is not None else 0) + 1,
                    document_json=document_json,
                    deleted=False,
                    created_by=caller.actor,
                )
                change.session.add(row)
        except ConfigRejected as exc:
            # Report the problem as a path inside the submitted document.
            if match := _DOCUMENT_PATH.match(exc.field):
                raise InvalidArgument("document" + exc.field[match.end() :], exc.problem) from exc
            raise
        return row, change.version

    async def get(self, tenant: str, version: int = 0) -> Policy:
        async with self.uow.read() as session:
            tenant_id = await self._tenant_id(session, tenant)
            history = await repo.policy_history(session, tenant_id)
        label = f"policy of {shown(tenant)}" if tenant else "platform default policy"
        if version:
            for row in history:
                if row.version == version and not row.deleted:
                    return row
            raise NotFound(label, f"version {version}")
        if not history or history[-1].deleted:
            raise NotFound(label, "current")
        return history[-1]

    async def history(self, tenant: str) -> Sequence[Policy]:
        async with self.uow.read() as session:
            return await repo.policy_history(session, await self._tenant_id(session, tenant))

    async def delete(self, caller: Caller, tenant: str) -> int:
        """Record a deletion as a new version; earlier versions stay in the history."""
        async with self.uow.change(caller, f"delete policy {tenant or '(default)'}") as change:
            tenant_id = await self._tenant_id(change.session, tenant)
            latest = await repo.latest_policy(change.session, tenant_id)
            if latest is None or latest.deleted:
                raise NotFound("policy" if tenant else "platform default policy", tenant or "default")
            change.session.add(
                Policy(
                    tenant_id=tenant_id,
                    version=latest.version + 1,
                    document_json="{}",
                    deleted=True,
                    created_by=caller.actor,
                )
            )
        return change.version
