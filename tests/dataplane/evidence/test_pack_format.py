"""The pack format's own pieces: the seal signs exactly what a snapshot envelope would (same
PAE, same key ids, so one --trust-key checks both), and a seal signature's base64 has one
spelling only."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.evidence import pack, pack_verify
from dataplane.evidence.pruned import verify_statement
from dataplane.snapshot import envelope


def test_pae_and_key_ids_are_the_snapshot_envelopes() -> None:
    key = Ed25519PrivateKey.generate()
    assert pack.key_id_for(key.public_key()) == envelope.key_id_for(key.public_key())
    for payload in (b"", b"{}", "é".encode() * 300):
        assert pack.pae(pack.PAYLOAD_TYPE, payload) == envelope.pae(pack.PAYLOAD_TYPE, payload)


def test_a_seal_signature_spelled_another_way_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    manifest = {"records": 0}
    signature = pack.sign_ed25519(key, manifest)
    trusted = {signature["keyid"]: key.public_key()}
    seal = pack.Seal(manifest, [signature])
    assert pack_verify._check_seal(seal, 9, trusted) == signature["keyid"]
    # 64 bytes: the last character before "==" carries 4 spare bits.
    sig = signature["sig"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    respelled = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="
    assert base64.b64decode(respelled) == base64.b64decode(sig)
    with pytest.raises(pack.PackInvalid, match=r"line 9: the seal's signature by key .* does not verify"):
        pack_verify._check_seal(pack.Seal(manifest, [{**signature, "sig": respelled}]), 9, trusted)


def test_the_writer_states_revocations_exactly_in_a_version_2_control_plane_pack() -> None:
    out = io.BytesIO()
    writer = pack.PackWriter(out)
    writer.header(pack.KIND_CONTROL_PLANE)
    with pytest.raises(ValueError, match=r"states its revoked certificates \(revoked=\{\} for none\)"):
        writer.certificates("", {})
    writer.certificates("", {}, revoked={})
    assert (
        out.getvalue().splitlines()[1] == b'{"node_ca":"","nodes":{},"revoked":{},"section":"certificates"}'
    )

    out = io.BytesIO()
    node = pack.PackWriter(out)
    node.header(pack.KIND_NODE)
    assert out.getvalue() == b'{"format":"signalbox-evidence-pack","version":1,"kind":"node"}\n'
    with pytest.raises(ValueError, match="any other pack none"):
        node.certificates("", {}, revoked={})


DEEP = b"[" * 2000 + b"]" * 2000
"""Valid JSON of 4000 bytes (under the header's bound) nested deeper than json.loads can go."""


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (DEEP + b"\n", "line 1: the header is JSON nested too deep"),
        (pack.header_line() + DEEP + b"\n", "line 2: a section is JSON nested too deep"),
    ],
)
def test_a_pack_nested_too_deep_is_invalid_naming_its_line(
    content: bytes, problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "deep.pack"
    path.write_bytes(content)
    with pytest.raises(pack.PackInvalid, match=problem):
        pack_verify.verify(path, {})
    assert pack.record_count_hint(path) is None


def test_a_pruned_statement_nested_too_deep_does_not_verify() -> None:
    # What pack_facts catches (ValueError) to name the statement in the pack.
    with pytest.raises(ValueError, match="the statement is JSON nested too deep"):
        verify_statement(DEEP, {})
