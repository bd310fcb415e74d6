"""Round trips for every algorithm, tamper detection, and interop with an independent implementation."""

from __future__ import annotations

import pytest
from pqcrypto.kem import ml_kem_768
from pqcrypto.sign import ml_dsa_65

from tests.keys.conftest import OWNER
from ztmesh.keys.algorithms import Algorithm, OpenSslProvider, Purpose
from ztmesh.keys.envelope import Envelope
from ztmesh.keys.errors import EnvelopeError, KeyVersionUnusable

ENCRYPTION = [Algorithm.ML_KEM_768, Algorithm.ML_KEM_1024, Algorithm.X25519_ML_KEM_768]
SIGNATURE = [Algorithm.ML_DSA_65, Algorithm.ML_DSA_87, Algorithm.ED25519]


@pytest.mark.parametrize("algorithm", ENCRYPTION, ids=lambda a: a.value)
@pytest.mark.parametrize("size", [0, 1, 1024, 70_000])
def test_encrypt_decrypt_round_trip(manager, algorithm, size):
    manager.create_key(OWNER, "patient-1", Purpose.ENCRYPT, algorithm)
    plaintext = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    envelope, version = manager.encrypt(OWNER, "patient-1", plaintext, b"record=42")
    assert version == 1
    if size >= 16:
        assert plaintext[:16] not in envelope
    assert manager.decrypt(OWNER, envelope, b"record=42") == (plaintext, "patient-1", 1)


@pytest.mark.parametrize("algorithm", SIGNATURE, ids=lambda a: a.value)
def test_sign_verify_round_trip(manager, algorithm):
    manager.create_key(OWNER, "signer", Purpose.SIGN, algorithm)
    signature, version, used = manager.sign(OWNER, "signer", b"checkpoint 17")
    assert used is algorithm
    assert manager.verify(OWNER, "signer", version, b"checkpoint 17", signature)
    assert not manager.verify(OWNER, "signer", version, b"checkpoint 18", signature)
    forged = bytearray(signature)
    forged[len(forged) // 2] ^= 1
    assert not manager.verify(OWNER, "signer", version, b"checkpoint 17", bytes(forged))


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def _tamper_cases(envelope: bytes) -> dict[str, tuple[bytes, bytes]]:
    parsed = Envelope.parse(envelope)
    header_len = len(parsed.header())
    kem_start = header_len - 12 - len(parsed.kem_ciphertext)
    id_start = 6
    version_at = id_start + len(parsed.key_id)
    return {
        "ciphertext bit": (_flip(envelope, len(envelope) - 20), b"aad"),
        "tag bit": (_flip(envelope, len(envelope) - 1), b"aad"),
        "nonce bit": (_flip(envelope, header_len - 1), b"aad"),
        "kem ciphertext bit": (_flip(envelope, kem_start + 5), b"aad"),
        "wrong associated data": (envelope, b"aad!"),
        "missing associated data": (envelope, b""),
        "older key version": (envelope[: version_at + 3] + b"\x01" + envelope[version_at + 4 :], b"aad"),
        "truncated": (envelope[: header_len + 5], b"aad"),
        "bad magic": (b"XXXX" + envelope[4:], b"aad"),
        "algorithm byte": (envelope[:4] + b"\x0a" + envelope[5:], b"aad"),
    }


@pytest.mark.parametrize("algorithm", ENCRYPTION, ids=lambda a: a.value)
def test_tampering_is_detected(manager, algorithm):
    manager.create_key(OWNER, "k", Purpose.ENCRYPT, algorithm)
    manager.rotate(OWNER, "k")  # version 2 exists, so a rewritten version number names a real key
    envelope, _ = manager.encrypt(OWNER, "k", b"prontuario: paciente Maria", b"aad")
    assert Envelope.parse(envelope).key_version == 2
    for name, (bad, aad) in _tamper_cases(envelope).items():
        assert bad != envelope or aad != b"aad", name
        try:
            manager.decrypt(OWNER, bad, aad)
        except (EnvelopeError, KeyVersionUnusable) as exc:
            assert str(exc), name
        else:
            pytest.fail(f"tampering not detected: {name}")


def test_envelope_for_another_key_is_refused(manager):
    manager.create_key(OWNER, "a", Purpose.ENCRYPT)
    manager.create_key(OWNER, "b", Purpose.ENCRYPT)
    envelope, _ = manager.encrypt(OWNER, "a", b"secret")
    with pytest.raises(EnvelopeError, match="made for key 'a', not 'b'"):
        manager.decrypt(OWNER, envelope, expected_key_id="b")
    # Re-labelled to key b: b's private key cannot open it.
    relabelled = envelope.replace(b"\x01a", b"\x01b", 1)
    with pytest.raises(EnvelopeError, match="failed authentication"):
        manager.decrypt(OWNER, relabelled)


def test_ml_kem_768_interoperates_with_pqclean():
    provider = OpenSslProvider()
    # PQClean encapsulates to our public key; we decapsulate.
    private, public = provider.generate(Algorithm.ML_KEM_768)
    ciphertext, shared = ml_kem_768.encaps(public)
    assert provider.decapsulate(Algorithm.ML_KEM_768, private, ciphertext) == shared
    # We encapsulate to PQClean's public key; PQClean decapsulates.
    pq_public, pq_secret = ml_kem_768.keygen()
    shared, ciphertext = provider.encapsulate(Algorithm.ML_KEM_768, pq_public)
    assert ml_kem_768.decaps(pq_secret, ciphertext) == shared


def test_ml_dsa_65_interoperates_with_pqclean():
    provider = OpenSslProvider()
    private, public = provider.generate(Algorithm.ML_DSA_65)
    signature = provider.sign(Algorithm.ML_DSA_65, private, b"audit head")
    ml_dsa_65.verify(public, b"audit head", signature)  # raises when invalid
    pq_public, pq_secret = ml_dsa_65.keygen()
    pq_signature = ml_dsa_65.sign(pq_secret, b"audit head")
    assert provider.verify(Algorithm.ML_DSA_65, pq_public, b"audit head", pq_signature)
    assert not provider.verify(Algorithm.ML_DSA_65, pq_public, b"audit tail", pq_signature)
