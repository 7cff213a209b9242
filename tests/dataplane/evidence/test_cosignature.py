"""The witness cosignature's format (C2SP tlog-cosignature/v1) and its checks on hostile lines."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataplane.evidence import checkpoint, cosignature

NODE_KEY = ec.generate_private_key(ec.SECP256R1())
CP_KEY = Ed25519PrivateKey.generate()
NOTE = checkpoint.sign(NODE_KEY, "node-1/0", 3, b"\x01" * 32, 1_800_000_000)


def test_the_line_is_a_c2sp_cosignature_over_the_checkpoint_body() -> None:
    cosigned = cosignature.cosign(NOTE, "k1", CP_KEY, 1_800_000_050)
    assert cosigned.startswith(NOTE)
    line = cosigned[len(NOTE) :].decode()
    assert line.startswith("\u2014 signalbox-control-plane/k1 ")
    assert line.endswith("\n")
    blob = base64.b64decode(line.split(" ")[2])
    raw = CP_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert blob[:4] == hashlib.sha256(b"signalbox-control-plane/k1\n\x04" + raw).digest()[:4]
    assert struct.unpack("!Q", blob[4:12]) == (1_800_000_050,)
    body = NOTE.partition(b"\n\n")[0] + b"\n"
    CP_KEY.public_key().verify(blob[12:], b"cosignature/v1\ntime 1800000050\n" + body)
    # The node's signature still verifies, and the witness reads back.
    assert checkpoint.verify(cosigned, NODE_KEY.public_key()).time == 1_800_000_000
    assert cosignature.witnesses(cosigned, {"k1": CP_KEY.public_key()}) == [
        cosignature.Witness("k1", 1_800_000_050)
    ]
    assert cosignature.cosigned_by(cosigned) == {"k1"}
    assert cosignature.cosigned_by(NOTE) == set()


def test_lines_by_unknown_keys_are_ignored_and_bad_lines_by_trusted_ones_are_named() -> None:
    cosigned = cosignature.cosign(NOTE, "k1", CP_KEY, 5)
    assert cosignature.witnesses(cosigned, {"k2": Ed25519PrivateKey.generate().public_key()}) == []
    other = Ed25519PrivateKey.generate()
    trusted = {"k1": CP_KEY.public_key()}
    for line, problem in (
        ("\u2014 signalbox-control-plane/k1 !!!\n", "is not standard base64"),
        ("\u2014 signalbox-control-plane/k1 \u00e9\n", "is not standard base64"),  # not ASCII
        ("\u2014 signalbox-control-plane/k1 AAAA\n", "is not one by that key"),
        # A cosignature by another key under k1's name.
        (cosignature.cosign(NOTE, "k1", other, 5)[len(NOTE) :].decode(), "is not one by that key"),
    ):
        with pytest.raises(cosignature.CosignatureInvalid, match=problem):
            cosignature.witnesses(NOTE + line.encode(), trusted)
    changed_body = cosigned.replace(b"\n3\n", b"\n4\n", 1)
    with pytest.raises(cosignature.CosignatureInvalid, match="does not verify"):
        cosignature.witnesses(changed_body, trusted)
    with pytest.raises(cosignature.CosignatureInvalid, match="not UTF-8"):
        cosignature.witnesses(NOTE + b"\xff\xfe\n", trusted)
    with pytest.raises(cosignature.CosignatureInvalid, match="no empty line"):
        cosignature.witnesses(b"just a line\n", trusted)
    with pytest.raises(ValueError, match="out of range"):
        cosignature.cosign(NOTE, "k1", CP_KEY, -1)
