"""``signalbox controlplane export-api-key-hash-key`` and ``rotate-kek``: the commands that
handle the control plane's sealed keys offline, and the migrated database every offline
command opens (``database``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROTATE_KEK = "controlplane rotate-kek"


def failure(exc: BaseException) -> str:
    """One line for why a command failed: a database error as its driver's first line
    (SQLAlchemy's own text adds the SQL, its parameters and a web link over several lines;
    the driver never echoes the URL's password), anything else as it is."""
    from sqlalchemy.exc import SQLAlchemyError

    from signalbox.text import printable

    if isinstance(exc, SQLAlchemyError):
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return "database: " + printable(lines[0] if lines else type(exc).__name__)
    return str(exc)


EXPORT_HASH_KEY = "controlplane export-api-key-hash-key"


@asynccontextmanager
async def database(ns: argparse.Namespace) -> AsyncIterator[str]:
    """A migrated database URL: the given one, or embedded PostgreSQL under --data-dir."""
    from controlplane.app import embedded_url
    from controlplane.db.migrate import upgrade_head
    from controlplane.db.session import normalize_url

    embedded = None
    if ns.database_url:
        url = normalize_url(ns.database_url)
    else:
        embedded, url = await asyncio.to_thread(embedded_url, Path(ns.data_dir))
    try:
        await asyncio.to_thread(upgrade_head, url)
        yield url
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def export_hash_key_command(ns: argparse.Namespace) -> int:
    """Write every live version of the API-key hash key for an air-gapped node: it verifies
    new-format keys with them."""
    from sqlalchemy.exc import SQLAlchemyError

    from controlplane.api_key_hash import HashKeyRing
    from controlplane.db.session import create_engine, session_factory
    from controlplane.errors import ControlPlaneError
    from controlplane.keys import load_kek
    from dataplane.snapshot.hash_key import HashKeys, write_hash_key_file

    if not ns.out:
        print(f"signalbox {EXPORT_HASH_KEY}: --out: required", file=sys.stderr)
        return 2
    out = Path(ns.out)

    async def run() -> HashKeys:
        kek = load_kek(
            kek_b64=ns.kek or None,
            kek_file=Path(ns.kek_file) if ns.kek_file else None,
            data_dir=Path(ns.data_dir),
        )
        async with database(ns) as url:
            engine = create_engine(url)
            try:
                async with session_factory(engine)() as session, session.begin():
                    ring = HashKeyRing(kek)
                    await ring.ensure(session)
                    live = await ring.live(session)
            finally:
                await engine.dispose()
        keys = HashKeys({h.version: h.key for h in live})
        write_hash_key_file(out, keys)
        return keys

    try:
        keys = asyncio.run(run())
    except FileExistsError:
        print(f"signalbox {EXPORT_HASH_KEY}: --out: {out} exists; not overwritten", file=sys.stderr)
        return 1
    except (ControlPlaneError, OSError, ValueError, SQLAlchemyError) as exc:
        print(f"signalbox {EXPORT_HASH_KEY}: {failure(exc)}", file=sys.stderr)
        return 1
    print(
        f"wrote the API-key hash key (versions {', '.join(map(str, keys.versions))}) to {out} (0600): "
        "keep it as private as the KEK; export again after a rotation",
        file=sys.stderr,
    )
    return 0


def rotate_kek_command(ns: argparse.Namespace) -> int:
    """Re-seal every private signing key under the new KEK in one transaction.

    A running control plane keeps signing (its keys are unsealed in memory); restart
    each replica with the new KEK. The old KEK no longer opens any key afterwards."""
    from sqlalchemy.exc import SQLAlchemyError

    from controlplane.api_key_hash import reseal_api_key_hash_key
    from controlplane.db.session import create_engine, session_factory
    from controlplane.errors import ControlPlaneError
    from controlplane.identity.ca import reseal_node_ca
    from controlplane.keys import Kek, decode_kek, generate_kek_file, load_kek, reseal_all

    if not ns.new_kek_file:
        print(f"signalbox {ROTATE_KEK}: --new-kek-file: required", file=sys.stderr)
        return 2
    new_path = Path(ns.new_kek_file)

    def keks() -> tuple[Kek, Kek]:
        old = load_kek(
            kek_b64=ns.kek or None,
            kek_file=Path(ns.kek_file) if ns.kek_file else None,
            data_dir=Path(ns.data_dir),
        )
        try:
            new = generate_kek_file(new_path)
        except FileExistsError:
            new = decode_kek(new_path.read_bytes(), "--new-kek-file")
        if new.id == old.id:
            raise ValueError("--new-kek-file: holds the current KEK")
        return old, new

    async def run() -> tuple[list[str], str]:
        old, new = keks()
        async with database(ns) as url:
            engine = create_engine(url)
            try:
                async with session_factory(engine)() as session, session.begin():
                    resealed = await reseal_all(session, old, new)
                    # The node CA key is sealed with the same KEK: re-sealed in the same transaction.
                    if await reseal_node_ca(session, old, new):
                        resealed.append("node-ca")
                    resealed.extend(
                        f"api-key-hash-key-v{v}" for v in await reseal_api_key_hash_key(session, old, new)
                    )
                    return resealed, new.id
            finally:
                await engine.dispose()

    try:
        resealed, new_id = asyncio.run(run())
    except (ControlPlaneError, OSError, ValueError, SQLAlchemyError) as exc:
        print(f"signalbox {ROTATE_KEK}: {failure(exc)}", file=sys.stderr)
        return 1
    print(
        f"re-sealed {len(resealed)} keys (signing keys, the node CA, API-key hash key versions) under KEK {new_id}; restart the control plane "
        f"with --kek-file {new_path} (the old KEK no longer opens them)",
        file=sys.stderr,
    )
    return 0
