"""A pack's own fields, each at the edge of what its reader takes: every byte of the seal is
covered by a signature or refused, and what a message echoes from the pack is bounded.

Found by mutating the JSON values of exported packs (a node pack and a control-plane one)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dataplane.evidence import pack, pack_verify
from dataplane.evidence.pack import PackInvalid

from .test_pack_unsupported_keys import exported


def rewrite(path: Path, section: str, change: object) -> None:
    """The pack's ``section`` line, parsed, changed in place by ``change`` and written back in
    its canonical form (the seal with ``seal_line``), so only the change is new."""
    lines = path.read_bytes().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if json.loads(line).get("section") == section)
    value = json.loads(lines[at])
    assert callable(change)
    change(value)
    if section == "seal":
        lines[at] = pack.seal_line(value["manifest"], value["signatures"])
    else:
        lines[at] = pack.canonical(value) + b"\n"
    path.write_bytes(b"".join(lines))


async def test_a_seal_signature_with_a_member_besides_keyid_and_sig_is_refused(tmp_path: Path) -> None:
    """The extra member was ignored: the pack verified with bytes in its seal no signature covers."""
    path = await exported(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    rewrite(path, "seal", lambda v: v["signatures"][0].update(note="x" * 5000))
    with pytest.raises(PackInvalid, match=r"^line \d+: each seal signature is an object of keyid and sig"):
        pack_verify.verify(path, {})


@pytest.mark.parametrize("sig", [5, None, ["AAAA"]])
def test_a_seal_signature_whose_values_are_not_text_is_refused(sig: object) -> None:
    data = pack.header_line() + pack.seal_line({}, [{"keyid": "k1", "sig": sig}])  # type: ignore[dict-item]
    with pytest.raises(PackInvalid, match=r"^line 2: each seal signature is an object of keyid and sig"):
        list(pack.read_sections(io.BytesIO(data)))


def test_a_key_signing_the_seal_twice_is_refused() -> None:
    """A control-plane pack's seal with one key's signature twice verified, its report saying
    ``signed_by: k1,k1``: as if two signatures stood behind it."""
    signature = {"keyid": "k1", "sig": "AAAA"}
    data = pack.header_line() + pack.seal_line({}, [signature, dict(signature)])
    with pytest.raises(PackInvalid, match=r"^line 2: a key signs the seal more than once$"):
        list(pack.read_sections(io.BytesIO(data)))


@pytest.mark.parametrize("field", ["chain_id", "node_id"])
async def test_a_chain_or_node_id_too_long_to_be_one_is_refused_in_a_bounded_message(
    tmp_path: Path, field: str
) -> None:
    """Messages about a chain echoed its id whole: 5,000 characters of it."""
    path = await exported(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    rewrite(path, "chain", lambda v: v.update({field: "x" * 5000}))
    with pytest.raises(PackInvalid, match=rf"{field} is longer than 300 characters") as refused:
        pack_verify.verify(path, {})
    assert len(str(refused.value)) < 200
