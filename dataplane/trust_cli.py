"""The ``--trust-key`` flag every command that checks a snapshot shares (``dataplane serve``,
``dataplane verify``, ``signalbox evidence verify``) and the key files it names."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from signalbox import settings


def _split_paths(raw: str) -> list[str]:
    return [p for p in raw.replace(os.pathsep, ",").split(",") if p.strip()]


def add_trust_key(parser: argparse.ArgumentParser, command: str) -> None:
    # Repeatable, which ``settings.add`` does not model; registered by hand so the
    # README still lists it. The env var takes a comma- or os.pathsep-separated list.
    env = "SIGNALBOX_TRUST_KEY"
    help_text = "the control plane's Ed25519 public key (PEM) trusted to sign snapshots and evidence packs; repeatable"
    settings.REGISTRY[f"{command} --trust-key"] = settings.Setting(
        "--trust-key", env, help_text, None, command
    )
    parser.add_argument(
        "--trust-key",
        action="append",
        default=None,
        metavar="FILE",
        help=f"{help_text} [env {env}, comma-separated]",
    )


def trust_key_paths(ns: argparse.Namespace) -> tuple[Path, ...]:
    given: list[str] | None = ns.trust_key
    if given is None:
        given = _split_paths(os.environ.get("SIGNALBOX_TRUST_KEY", ""))
    return tuple(Path(p) for p in given)
