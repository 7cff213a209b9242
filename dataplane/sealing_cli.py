"""``signalbox dataplane sealing-key generate``: a node group's key for sealed provider
credentials (``dataplane.providers.sealing``).

The private key goes to a new file (0600), given to the group's nodes as ``--sealing-key``;
the public key is printed (base64), for ``signalbox admin group update NAME
--sealing-public-key``. Admins seal credentials to it; only the group's nodes open them."""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dataplane.providers.sealing import encode_private_key, key_id, public_bytes

GENERATE = "dataplane sealing-key generate"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("sealing-key", help="a node group's key for sealed provider credentials")
    verbs = parser.add_subparsers(dest="sealing_command", required=True, metavar="COMMAND")
    generate = verbs.add_parser(
        "generate", help="write a new private key (0600) for --sealing-key and print its public key"
    )
    generate.add_argument("--out", type=Path, required=True, help="file for the private key (must not exist)")
    generate.set_defaults(handler=generate_command)


def generate_command(ns: argparse.Namespace) -> int:
    key = X25519PrivateKey.generate()
    try:
        # O_EXCL + mode: never over another key, never readable by others, not even briefly.
        fd = os.open(ns.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        print(f"signalbox {GENERATE}: --out: cannot create {ns.out}: {exc.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as f:
        f.write(encode_private_key(key))
    public = public_bytes(key)
    print(base64.b64encode(public).decode())
    print(
        f"wrote the private key to {ns.out} (0600; key id {key_id(public)}): give it to the group's nodes "
        "as --sealing-key, and register the public key above with "
        "`signalbox admin group update NAME --sealing-public-key KEY`",
        file=sys.stderr,
    )
    return 0
