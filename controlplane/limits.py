"""What the control plane can store: column widths, integer ranges, sizes, and the one
check of an Admin API request against them.

The database models (``controlplane.db.models``) declare their columns with these
constants, and ``check_request`` holds every request to them before a handler runs,
so a value the database cannot hold is an INVALID_ARGUMENT naming the field and the
limit, never an INTERNAL from the driver. No SQLAlchemy here: the admin CLI runs the
same check before it sends a request (``signalbox admin``), on installs without the
control plane's dependencies too.

PostgreSQL has no unsigned integers: a protobuf ``uint32`` is stored in an INTEGER
column (at most 2^31-1), a ``uint64`` in a BIGINT (at most 2^63-1). Text cannot
hold NUL, in a column or in JSONB. Timestamps are read with protobuf's
``ToDatetime``, which holds years 1 to 9999 only.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.errors import InvalidArgument, clip
from dataplane.config.model import DEFAULT_NODE_GROUP

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# Column widths (characters), used by controlplane.db.models.
NAME_CHARS = 200
"""Names, aliases, references, sites, regions, upstream model names."""
TIER_CHARS = 100
PROVIDER_TYPE_CHARS = 64
ENV_NAME_CHARS = 256
PREFIX_CHARS = 32
KEY_ID_CHARS = 64
RESULT_CHARS = 64
NODE_ID_CHARS = 256
"""Node ids: the subject of node certificates and the key of config sync."""
GROUP_NAME_CHARS = 63
"""Node group names: 1..63 of ``[a-z0-9-]`` (a DNS label, usable in certificates)."""
DEFAULT_GROUP = DEFAULT_NODE_GROUP
"""The group of nodes that name none; created by migration 0007."""

# Bounds of our own where the column is TEXT or JSONB (unbounded in the database, but
# every value ends up in every snapshot and on every node).
URL_CHARS = 2048
PATH_CHARS = 4096
MAP_ENTRIES = 64
MAP_KEY_CHARS = 200
MAP_VALUE_CHARS = 2048
LIST_ITEMS = 64
POLICY_DOCUMENT_BYTES = 1024 * 1024
"""The same bound ``dataplane.policy.language.parse_document`` applies."""
GOVERNANCE_DOCUMENT_BYTES = 256 * 1024
"""A governance profile document (``services.governance.parse_document`` checks its bytes)."""
GOVERNANCE_TEST_CHARS = 256 * 1024
"""The text ``TestGovernanceProfile`` runs a profile over."""

# Timestamp.ToDatetime's range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
TIMESTAMP_MIN_SECONDS = -62135596800
TIMESTAMP_MAX_SECONDS = 253402300799

CSR_CHARS = 16 * 1024
"""A PEM certificate signing request (``identity.ca.MAX_CSR_BYTES`` checks its bytes)."""
JWKS_CHARS = 64 * 1024
"""A tenant's JWKS document (``dataplane.snapshot.identities.MAX_JWKS_BYTES`` checks its bytes)."""
_ADMIN = "signalbox.api.admin.v1."
# The width of each string field that is stored; any other string (a reference to
# something stored) may be at most NAME_CHARS long, as long as anything it can name.
FIELD_CHARS: dict[str, int] = {
    _ADMIN + "CreateTenantRequest.tier": TIER_CHARS,
    _ADMIN + "UpdateTenantRequest.tier": TIER_CHARS,
    _ADMIN + "Provider.type": PROVIDER_TYPE_CHARS,
    _ADMIN + "Provider.base_url": URL_CHARS,
    "signalbox.api.config.v1.SecretRef.env": ENV_NAME_CHARS,
    "signalbox.api.config.v1.SecretRef.file": PATH_CHARS,
    _ADMIN + "ApplyPolicyRequest.document": POLICY_DOCUMENT_BYTES,
    _ADMIN + "ApplyGovernanceProfileRequest.document": GOVERNANCE_DOCUMENT_BYTES,
    _ADMIN + "TestGovernanceProfileRequest.text": GOVERNANCE_TEST_CHARS,
    _ADMIN + "CertifyNodeRequest.node_id": NODE_ID_CHARS,
    _ADMIN + "CertifyNodeRequest.csr_pem": CSR_CHARS,
    # Caller identities: a JWKS document (dataplane.snapshot.identities bounds its bytes) and a SAN URI.
    "signalbox.api.config.v1.JwtIssuer.jwks_json": JWKS_CHARS,
    "signalbox.api.config.v1.MtlsMapping.uri": URL_CHARS,
}
# Fields not walked into: ExplainRoute's request is read and checked exactly as a node
# reads a request (dataplane.edge, dataplane.validation), and is never stored.
OPAQUE_FIELDS = frozenset({_ADMIN + "ExplainRouteRequest.request"})
_TIMESTAMP = Timestamp.DESCRIPTOR.full_name
_INT_MAX = {
    FieldDescriptor.TYPE_UINT32: INT32_MAX,
    FieldDescriptor.TYPE_FIXED32: INT32_MAX,
    FieldDescriptor.TYPE_UINT64: INT64_MAX,
    FieldDescriptor.TYPE_FIXED64: INT64_MAX,
}


def check_request(message: Message) -> None:
    """Raise ``InvalidArgument`` at the first field of an Admin API request the control
    plane could not store: a string with NUL or over its width, an integer over its
    column's range, a timestamp outside years 1-9999, a map or list over its size."""
    _check_message(message, "")


def check_text(field: str, value: str, limit: int = NAME_CHARS) -> None:
    """One string: no NUL, at most ``limit`` characters (bytes, for the policy document)."""
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL")
    if limit == POLICY_DOCUMENT_BYTES:
        if len(value) > limit or len(value.encode("utf-8", "surrogatepass")) > limit:
            raise InvalidArgument(field, f"at most {limit} bytes")
    elif len(value) > limit:
        raise InvalidArgument(field, f"at most {limit} characters")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check_message(message: Message, path: str) -> None:
    if message.DESCRIPTOR.full_name == _TIMESTAMP:
        _check_timestamp(message, path)
        return
    for fd, value in message.ListFields():
        name = _join(path, fd.name)
        if fd.full_name in OPAQUE_FIELDS:
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            _check_map(fd, value, name)
        elif fd.is_repeated:
            if len(value) > LIST_ITEMS:
                raise InvalidArgument(name, f"at most {LIST_ITEMS} items")
            for i, item in enumerate(value):
                _check_value(fd, item, f"{name}[{i}]")
        else:
            _check_value(fd, value, name)


def _check_value(fd: FieldDescriptor, value: object, name: str) -> None:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        assert isinstance(value, Message)
        _check_message(value, name)
    elif fd.type == FieldDescriptor.TYPE_STRING:
        assert isinstance(value, str)
        check_text(name, value, FIELD_CHARS.get(fd.full_name, NAME_CHARS))
    elif fd.type in _INT_MAX:
        assert isinstance(value, int)
        limit = _INT_MAX[fd.type]
        if value > limit:
            raise InvalidArgument(name, f"at most {limit}")


def _check_map(fd: FieldDescriptor, value: object, name: str) -> None:
    entries = dict(value)  # type: ignore[call-overload]
    if len(entries) > MAP_ENTRIES:
        raise InvalidArgument(name, f"at most {MAP_ENTRIES} entries")
    value_fd = fd.message_type.fields_by_name["value"]  # type: ignore[union-attr]
    for key, item in sorted(entries.items()):
        if isinstance(key, str):
            check_text(f"{name} key", key, MAP_KEY_CHARS)
        if value_fd.type == FieldDescriptor.TYPE_STRING:
            # The key is checked above: it may be named.
            check_text(f"{name}.{clip(str(key))}", item, MAP_VALUE_CHARS)
        else:
            _check_value(value_fd, item, f"{name}.{clip(str(key))}")


def _check_timestamp(ts: Message, path: str) -> None:
    seconds = ts.seconds  # type: ignore[attr-defined]
    nanos = ts.nanos  # type: ignore[attr-defined]
    if not TIMESTAMP_MIN_SECONDS <= seconds <= TIMESTAMP_MAX_SECONDS:
        raise InvalidArgument(path, "must be between 0001-01-01 and 9999-12-31 (UTC)")
    if not 0 <= nanos <= 999_999_999:
        raise InvalidArgument(path, "nanos must be between 0 and 999999999")
