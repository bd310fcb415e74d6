"""The key-encryption key (KEK) and the wrapping of private key material at rest.

Each key version's private seed is sealed with AES-256-GCM under a wrapping key derived from the
KEK *and* a per-version secret kept in the shred ledger (ledger.py), outside the database: erasing
that secret makes the version's wrapped material in any database copy unrecoverable.
The KEK comes from `ZTMESH_KEK` (base64 of 32 bytes) or `ZTMESH_KEK_FILE` (a mounted Secret).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ztmesh.keys.errors import KekMissing, KeysError, WrongKek

KEK_SIZE = 32


class Kek:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEK_SIZE:
            raise KeysError(f"the key-encryption key must be {KEK_SIZE} bytes, got {len(key)}")
        self._key = key

    @classmethod
    def generate(cls) -> Kek:
        return cls(os.urandom(KEK_SIZE))

    @classmethod
    def from_base64(cls, text: str, source: str) -> Kek:
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except (binascii.Error, KeysError) as exc:
            raise KeysError(f"{source}: not base64 of {KEK_SIZE} bytes ({exc})") from None

    @classmethod
    def from_settings(cls, kek: str, kek_file: Path | None) -> Kek:
        if kek_file is not None:
            try:
                return cls.from_base64(kek_file.read_text(), f"ZTMESH_KEK_FILE {kek_file}")
            except OSError as exc:
                raise KekMissing(f"ZTMESH_KEK_FILE: cannot read {kek_file}: {exc.strerror}") from None
        if kek:
            return cls.from_base64(kek, "ZTMESH_KEK")
        raise KekMissing("ZTMESH_KEK or ZTMESH_KEK_FILE must hold the key-encryption key (base64 of 32 bytes)")

    def to_base64(self) -> str:
        return base64.b64encode(self._key).decode()

    def check_value(self) -> str:
        """A public fingerprint of the KEK, stored beside the keys to refuse a wrong KEK at start-up."""
        return hmac.new(self._key, b"ztmesh kek check v1", hashlib.sha256).hexdigest()[:32]

    def verify_against(self, stored_check_value: str) -> None:
        if not hmac.compare_digest(self.check_value(), stored_check_value):
            raise WrongKek(
                "the configured key-encryption key is not the one these keys were wrapped with "
                f"(store expects KEK {stored_check_value[:8]}…, got {self.check_value()[:8]}…); nothing was changed"
            )

    def _wrapping_key(self, version_secret: bytes, label: bytes) -> AESGCM:
        derived = HKDF(hashes.SHA256(), 32, salt=version_secret, info=b"ztmesh/wrap/v1|" + label).derive(self._key)
        return AESGCM(derived)

    def wrap(self, private: bytes, version_secret: bytes, label: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._wrapping_key(version_secret, label).encrypt(nonce, private, label)

    def unwrap(self, wrapped: bytes, version_secret: bytes, label: bytes) -> bytes:
        try:
            return self._wrapping_key(version_secret, label).decrypt(wrapped[:12], wrapped[12:], label)
        except InvalidTag:
            raise WrongKek(f"cannot unwrap the private key of {label.decode()}: wrong KEK or corrupted") from None
