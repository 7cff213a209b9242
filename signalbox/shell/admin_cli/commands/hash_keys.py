"""``signalbox admin api-key-hash-key list|rotate|retire``: the versions of the key API keys
are hashed with (``controlplane.api_key_hash``). Never the key itself."""

from __future__ import annotations

import argparse

from signalbox.api.admin.v1 import admin_pb2
from signalbox.shell.admin_cli.commands.base import Stub, bounded_int
from signalbox.shell.admin_cli.output import Output, _time

HASH_KEY_COLUMNS = ("version", "state", "created", "retired", "usable keys")
MAX_VERSION = 2**32 - 1


def _row(v: admin_pb2.ApiKeyHashKeyInfo) -> tuple[object, ...]:
    return (v.version, v.state, _time(v.created_at), _time(v.retired_at), v.usable_keys)


version_number = bounded_int("a version number", 1, MAX_VERSION)


async def hash_key_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListApiKeyHashKeys(admin_pb2.ListApiKeyHashKeysRequest())
    return Output(r, HASH_KEY_COLUMNS, [_row(v) for v in r.versions])


async def hash_key_rotate(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.RotateApiKeyHashKey(admin_pb2.RotateApiKeyHashKeyRequest())
    text = f"API-key hash key version {r.version.version} active (published v{r.snapshot_version})\n"
    if r.retired:
        text += f"retired (no usable key used it): version {', '.join(map(str, r.retired))}\n"
    return Output(r, text=text)


async def hash_key_retire(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.RetireApiKeyHashKey(admin_pb2.RetireApiKeyHashKeyRequest(version=ns.version))
    return Output(
        r, text=f"API-key hash key version {r.version.version} retired (published v{r.snapshot_version})\n"
    )


def add_hash_key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``api-key-hash-key list|rotate|retire`` under ``signalbox admin``."""
    resource = sub.add_parser("api-key-hash-key", help="versions of the key API keys are hashed with")
    verbs = resource.add_subparsers(dest="hash_key_verb", required=True, metavar="VERB")
    for name, action, help in (
        ("list", hash_key_list, "version, state (active/retiring/retired), created, usable keys under it"),
        ("rotate", hash_key_rotate, "new active version for keys issued from now on; older keys keep theirs (admin role)"),
        ("retire", hash_key_retire, "destroy a version no usable key uses any more; nodes forget it (admin role)"),
    ):  # fmt: skip
        p = verbs.add_parser(name, help=help)
        p.set_defaults(admin_action=action)
        if name == "retire":
            p.add_argument("version", type=version_number, metavar="VERSION")
