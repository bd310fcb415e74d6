"""The envelope: a self-describing, versioned container for data encrypted to a KEM key.

    offset  size  field
    0       4     magic "ZTE1" (format version 1)
    4       1     algorithm code (1 ML-KEM-768, 2 ML-KEM-1024, 3 X25519+ML-KEM-768)
    5       1     key id length n (1..128)
    6       n     key id (UTF-8)
    6+n     4     key version (big-endian)
    10+n    2     KEM ciphertext length m
    12+n    m     KEM ciphertext
    12+n+m  12    AES-GCM nonce
    24+n+m  ...   AES-256-GCM ciphertext with its 16-byte tag

The data key is HKDF-SHA256(KEM shared secret, info="ztmesh/envelope/v1"), fresh per message.
The whole header (bytes 0..24+n+m) followed by the caller's associated data is the GCM associated
data, so any flipped bit, another key version or other associated data fails authentication.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ztmesh.keys.algorithms import Algorithm, Purpose
from ztmesh.keys.errors import EnvelopeError

MAGIC = b"ZTE1"
NONCE_SIZE = 12
TAG_SIZE = 16
_DATA_KEY_INFO = b"ztmesh/envelope/v1"


@dataclass(frozen=True)
class Envelope:
    algorithm: Algorithm
    key_id: str
    key_version: int
    kem_ciphertext: bytes
    nonce: bytes
    ciphertext: bytes

    def header(self) -> bytes:
        key_id = self.key_id.encode()
        return (
            MAGIC
            + bytes([self.algorithm.code, len(key_id)])
            + key_id
            + struct.pack(">IH", self.key_version, len(self.kem_ciphertext))
            + self.kem_ciphertext
            + self.nonce
        )

    def to_bytes(self) -> bytes:
        return self.header() + self.ciphertext

    @classmethod
    def parse(cls, data: bytes) -> Envelope:
        try:
            if data[:4] != MAGIC:
                raise EnvelopeError("not a ztmesh envelope (bad magic or unsupported format version)")
            algorithm = Algorithm.from_code(data[4])
            if algorithm.purpose is not Purpose.ENCRYPT:
                raise EnvelopeError(f"envelope names {algorithm.value}, which is not an encryption algorithm")
            id_len = data[5]
            key_id = data[6 : 6 + id_len].decode()
            offset = 6 + id_len
            version, kem_len = struct.unpack_from(">IH", data, offset)
            offset += 6
            kem_ciphertext = data[offset : offset + kem_len]
            nonce = data[offset + kem_len : offset + kem_len + NONCE_SIZE]
            ciphertext = data[offset + kem_len + NONCE_SIZE :]
        except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
            if isinstance(exc, EnvelopeError):
                raise
            raise EnvelopeError(f"malformed envelope: {exc}") from None
        if not key_id or len(kem_ciphertext) != kem_len or len(nonce) != NONCE_SIZE or len(ciphertext) < TAG_SIZE:
            raise EnvelopeError("malformed envelope: truncated")
        return cls(algorithm, key_id, version, kem_ciphertext, nonce, ciphertext)


def _data_key(shared_secret: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DATA_KEY_INFO).derive(shared_secret)
    return AESGCM(key)


def seal(
    algorithm: Algorithm,
    key_id: str,
    key_version: int,
    shared_secret: bytes,
    kem_ciphertext: bytes,
    plaintext: bytes,
    associated_data: bytes,
) -> bytes:
    """Encrypt under a data key derived from a fresh KEM shared secret."""
    draft = Envelope(algorithm, key_id, key_version, kem_ciphertext, os.urandom(NONCE_SIZE), b"")
    ciphertext = _data_key(shared_secret).encrypt(draft.nonce, plaintext, draft.header() + associated_data)
    return draft.header() + ciphertext


def open_sealed(envelope: Envelope, shared_secret: bytes, associated_data: bytes) -> bytes:
    try:
        return _data_key(shared_secret).decrypt(
            envelope.nonce, envelope.ciphertext, envelope.header() + associated_data
        )
    except InvalidTag:
        raise EnvelopeError(
            "envelope failed authentication: tampered with, wrong associated data, or not made for this key"
        ) from None
