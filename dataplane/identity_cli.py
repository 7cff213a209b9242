"""``signalbox dataplane identity request|install|show``: provisioning a node's identity
without enrollment (an air-gapped site).

The node's key is generated on the node and never leaves it. ``request`` writes a CSR of
that key; an admin turns it into a certificate with ``signalbox admin node certify`` (the
same node CA and the same bindings as enrollment: node id, group, mode, site) and carries
the bundle back; ``install`` checks the bundle against the node's key and id and stores it
where enrollment would (``<data_dir>/identity/node.crt`` and ``ca.pem``). Evidence the node
signed with the key before it was provisioned then verifies with the certificate too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryptography import x509

from dataplane.files import read_regular
from dataplane.identity import MAX_BUNDLE_BYTES, IdentityFiles, NodeIdentityError, install_bundle
from dataplane.snapshot.files import atomic_write
from signalbox import settings

REQUEST = "dataplane identity request"
INSTALL = "dataplane identity install"
SHOW = "dataplane identity show"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], default_node_id: str) -> None:
    identity = sub.add_parser(
        "identity", help="provision this node's identity without enrollment (air-gapped sites)"
    )
    verbs = identity.add_subparsers(dest="identity_command", required=True, metavar="COMMAND")
    request = verbs.add_parser(
        "request", help="write a CSR of the node's key (generated on first use) for `admin node certify`"
    )
    _common(request, REQUEST, default_node_id)
    request.add_argument("--out", type=Path, help="write the CSR here instead of to stdout")
    request.set_defaults(handler=request_command)
    install = verbs.add_parser(
        "install", help="install the bundle `admin node certify` wrote, after checking it"
    )
    _common(install, INSTALL, default_node_id)
    install.add_argument(
        "bundle", type=Path, metavar="BUNDLE", help="the PEM bundle (certificate, then node CA)"
    )
    install.set_defaults(handler=install_command)
    show = verbs.add_parser("show", help="the node's key and certificate: whom it names, until when")
    _common(show, SHOW, default_node_id)
    show.set_defaults(handler=show_command)


def _common(parser: argparse.ArgumentParser, command: str, default_node_id: str) -> None:
    settings.add(
        parser,
        "--data-dir",
        type=settings.directory,
        env="SIGNALBOX_NODE_DATA_DIR",
        default="./var/node",
        help="the node's data dir (the identity is kept in its identity/)",
        command=command,
    )
    settings.add(
        parser,
        "--node-id",
        env="SIGNALBOX_NODE_ID",
        type=settings.node_id,
        default=default_node_id,
        help="this node's id (default node-<hostname>)",
        command=command,
    )


def request_command(ns: argparse.Namespace) -> int:
    files = IdentityFiles.under(Path(ns.data_dir))
    try:
        csr = files.csr_pem(ns.node_id)
    except NodeIdentityError as exc:
        print(f"identity request: {exc}", file=sys.stderr)
        return 1
    if ns.out is None:
        sys.stdout.write(csr)
    else:
        try:
            atomic_write(ns.out, csr.encode())
        except OSError as exc:
            print(
                f"identity request: --out {ns.out}: {exc.strerror or exc}; nothing was written",
                file=sys.stderr,
            )
            return 1
        print(f"CSR of node {ns.node_id}'s key written to {ns.out}", file=sys.stderr)
    return 0


def install_command(ns: argparse.Namespace) -> int:
    files = IdentityFiles.under(Path(ns.data_dir))
    try:
        # Without blocking and bounded: a FIFO given as the bundle hung the command.
        bundle = read_regular(Path(ns.bundle), MAX_BUNDLE_BYTES)
        cert = install_bundle(files, bundle, ns.node_id)
    except OSError as exc:
        print(
            f"identity install: cannot read {ns.bundle}: {exc.strerror}; nothing was installed",
            file=sys.stderr,
        )
        return 1
    except NodeIdentityError as exc:
        print(f"identity install: {exc}; nothing was installed", file=sys.stderr)
        return 1
    print(
        f"installed certificate {cert.serial_number:x} for node {ns.node_id} until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    )
    return 0


def show_command(ns: argparse.Namespace) -> int:
    files = IdentityFiles.under(Path(ns.data_dir))
    if not files.key.exists():
        print(f"no node key in {files.directory}", file=sys.stderr)
        return 1
    cert = files.certificate()
    if cert is None:
        print(
            f"node key {files.key}: not certified (run `dataplane identity request`, then `admin node certify`)"
        )
        return 0
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:  # not a node certificate: ``problem`` says so below
        uris = []
    print(f"certificate {cert.serial_number:x} until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    for uri in uris:
        print(f"  {uri}")
    try:
        problem = files.problem(ns.node_id)
    except NodeIdentityError as exc:
        problem = str(exc)
    print(f"usable as node {ns.node_id}: {'yes' if not problem else 'no: ' + problem}")
    return 0 if not problem else 1
