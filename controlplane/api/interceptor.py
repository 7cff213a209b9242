"""Every AdminService call: authenticate, authorize, run, map errors to statuses, audit.

One wrapper around each admin handler, so no handler repeats any of it. An admin is a
bearer token, or (without one, on a listener that verifies client certificates) a client
certificate whose URI SAN is mapped to an admin identity. Authorization is the table in
``api/authz.py``. The audit entry is written after the call in its own transaction, so
refused and failed calls are recorded too, with the digests of the object a write changed.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from cryptography import x509

from controlplane.api.audit_limit import UnauthenticatedAuditLimit
from controlplane.api.authz import Admission, Authorizer
from controlplane.api.status import bounded, status_for
from controlplane.errors import Unauthenticated, clip
from controlplane.limits import NAME_CHARS, check_request
from controlplane.repositories.admin import AuditRow
from controlplane.services.admin import AdminService, check_active
from controlplane.services.base import Caller
from dataplane.connection_front import peer_of

if TYPE_CHECKING:
    from controlplane.metrics import ControlPlaneMetrics

log = logging.getLogger(__name__)

ADMIN_SERVICE = "/signalbox.api.admin.v1.AdminService/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/"
"""Server reflection lists the admin API: only to an admin (any role), as calling it."""
# Request fields that name what a call is about, in order of preference.
_TARGET_FIELDS = ("tenant", "id", "name", "provider", "model", "version", "key_id", "node_id", "group")

Context = grpc.aio.ServicerContext[Any, Any]

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("signalbox_admin_caller")


def current_caller() -> Caller:
    """The authenticated caller of the admin call being handled."""
    return _caller.get()


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | Any) -> str | None:
    """The bearer token of the call; None when it sends no ``authorization``."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization: expected 'Bearer <token>'")
            return token.strip()
    return None


def certificate_uris(context: Context) -> list[str] | None:
    """The URI SANs of the client certificate TLS verified; None when there is none."""
    pem = list((context.auth_context() or {}).get("x509_pem_cert", ()))
    if not pem:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(pem[0])
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except ValueError as exc:
        raise Unauthenticated("the client certificate cannot be read") from exc
    return [str(uri) for uri in names.get_values_for_type(x509.UniformResourceIdentifier)]


def target_of(request: Any) -> str:
    """A short description of what the request addresses, for the audit log. Never secrets:
    only identifying fields are read."""
    for name in _TARGET_FIELDS:
        try:
            value = getattr(request, name)
        except AttributeError:
            continue
        if hasattr(value, "DESCRIPTOR"):
            value = getattr(value, "id", "") or getattr(value, "name", "") or getattr(value, "alias", "")
        if value:
            # A hostile caller chooses it: one bounded line, and never NUL (text columns cannot hold it).
            return bounded(f"{name}={clip(str(value))}").replace("\x00", "")
    return ""


Behavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]


@dataclass(slots=True)
class _Call:
    """Who made an admin call (once known) and what it is about, for its audit row."""

    target: str
    actor: str = "anonymous"
    actor_role: str = ""
    actor_tenant: str = ""
    tenant: str = ""
    before: str = ""
    after: str = ""

    def row(self, method: str, result: str, detail: str) -> AuditRow:
        return AuditRow(
            actor=self.actor[:NAME_CHARS],
            method=method[:NAME_CHARS],
            target=self.target,
            result=result,
            detail=detail,
            actor_role=self.actor_role,
            actor_tenant=self.actor_tenant,
            tenant=self.tenant,
            before_sha256=self.before,
            after_sha256=self.after,
        )


class AdminInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps the handlers of AdminService (unary, server- and client-streaming) with auth, status
    mapping and audit."""

    def __init__(
        self, admin: AdminService, *, unauthenticated_rows: int = 20, unauthenticated_window: float = 60.0
    ) -> None:
        self._admin = admin
        self.authz = Authorizer(admin)
        self.metrics: ControlPlaneMetrics | None = None
        """Counts admin calls when the control plane serves metrics."""
        self.unauthenticated = UnauthenticatedAuditLimit(
            self._audit_suppressed, rows=unauthenticated_rows, window=unauthenticated_window
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is not None and method.startswith(REFLECTION) and handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_reflection(method.removeprefix("/"), handler.stream_stream),  # type: ignore[arg-type]
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler is None or not method.startswith(ADMIN_SERVICE):
            return handler
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method.removeprefix(ADMIN_SERVICE), handler.unary_stream),  # type: ignore[arg-type]
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                # The request is the stream of messages: data, checked by the handler.
                self._wrap(method.removeprefix(ADMIN_SERVICE), handler.stream_unary, streamed=True),  # type: ignore[arg-type]
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            # In a grpc.aio server the handlers are coroutine functions.
            self._wrap(method.removeprefix(ADMIN_SERVICE), handler.unary_unary),  # type: ignore[arg-type]
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, method: str, behavior: Behavior, *, streamed: bool = False) -> Behavior:
        """``streamed``: a client-streaming handler, admitted before any message is read."""

        async def handle(request: Any, context: Context) -> Any:
            call = _Call("" if streamed else target_of(request))
            try:
                admission = await self._admit(method, None if streamed else request, context, call)
                response = await behavior(request, context)
                if admission.scrub is not None:
                    admission.scrub(response)
                await self._after(method, request, call)
            except Exception as exc:
                await self._refuse(exc, method, context, call)
            await self._audit(call.row(method, "OK", ""))
            return response

        return handle

    def _wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        """The same for a server-streaming handler: nothing is sent before the caller is
        authenticated and allowed; a failure mid-stream ends it with its status."""

        async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(target_of(request))
            try:
                await self._admit(method, request, context, call)
                async for response in behavior(request, context):
                    yield response
            except Exception as exc:
                await self._refuse(exc, method, context, call)
            await self._audit(call.row(method, "OK", ""))

        return handle

    def _wrap_reflection(
        self, method: str, behavior: Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]]
    ) -> Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]]:
        """Reflection: the caller is authenticated before any request is read; any admin role
        may list (an auditor reads the API it may call). One audit row per stream, written
        when it is admitted: clients end reflection streams by hanging up."""

        async def handle(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            call = _Call("")
            try:
                await self._authenticate(context, call)
            except Exception as exc:
                await self._refuse(exc, method, context, call)
            await self._audit(call.row(method, "OK", ""))
            async for response in behavior(requests, context):
                yield response

        return handle

    async def _authenticate(self, context: Context, call: _Call) -> Caller:
        """The caller, named in ``call`` (its audit row) before an inactive tenant's is refused."""
        token = bearer_token(context.invocation_metadata())
        uris = certificate_uris(context) if token is None else None
        if token is None and uris is None:
            raise Unauthenticated("missing admin token: send 'authorization: Bearer <token>'")
        caller = (
            await self._admin.authenticate(token)
            if token is not None
            else await self._admin.authenticate_certificate(uris or [])
        )
        call.actor, call.actor_role, call.actor_tenant = caller.actor, caller.role, caller.tenant_id
        check_active(caller)
        return caller

    async def _admit(self, method: str, request: Any, context: Context, call: _Call) -> Admission:
        caller = await self._authenticate(context, call)
        if request is not None:
            # Nothing the database cannot hold gets past here (controlplane.limits).
            check_request(request)
        admission = await self.authz.admit(caller, method, request)
        call.tenant = admission.tenant
        rule = self.authz.rule(method)
        if rule is not None and request is not None:
            call.before = await self.authz.digest(rule, request)
        _caller.set(caller)
        return admission

    async def _after(self, method: str, request: Any, call: _Call) -> None:
        """The digest of what a write changed, as it is now."""
        rule = self.authz.rule(method)
        if rule is None or rule.subject is None or not call.before:
            return
        try:
            call.after = await self.authz.digest(rule, request)
        except Exception:
            # The change is made; its audit row must still be written, without this digest.
            log.exception("could not read %s's target after the call for its audit row", method)

    async def _refuse(self, exc: Exception, method: str, context: Context, call: _Call) -> NoReturn:
        mapped = status_for(exc)
        if mapped is None:
            log.exception("admin %s failed unexpectedly", method)
            code, message = grpc.StatusCode.INTERNAL, "internal error"
        else:
            code, message = mapped
        if not isinstance(exc, Unauthenticated) or self.unauthenticated.admit(peer_of(context)):
            await self._audit(call.row(method, code.name, message))
        elif self.metrics is not None:
            # Its audit row is folded into a summary row; the call still counts.
            self.metrics.admin_calls.labels(method, code.name).inc()
        await context.abort(code, message)
        raise AssertionError("abort raises")  # pragma: no cover

    async def _audit_suppressed(self, peer: str, count: int) -> None:
        detail = f"{count} more unauthenticated calls from {peer} suppressed"
        await self._audit(
            AuditRow("anonymous", "(unauthenticated)", f"peer={peer}", "UNAUTHENTICATED", detail)
        )

    async def close(self) -> None:
        """Write the summary rows of open windows; call before the database goes."""
        await self.unauthenticated.close()

    async def _audit(self, row: AuditRow) -> None:
        if self.metrics is not None and row.method != "(unauthenticated)":
            self.metrics.admin_calls.labels(row.method, row.result).inc()
        try:
            await self._admin.record(row)
        except Exception:
            # The call's outcome is already decided; losing its audit row must be loud, not fatal.
            log.exception("could not write the audit entry for %s by %s", row.method, row.actor)
