"""Checkpoint signers and verifiers: a local ML-DSA-65 key (embedded default, tests) and public keys.

In a mesh deployment checkpoints are signed by the keys service (`KeyServiceSigner` in keysign.py);
either way a verifier needs only the public key(s), e.g. `ztmesh audit verify --public-key FILE`.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa

from ztmesh.audit.chain import Signature
from ztmesh.audit.errors import CheckpointError

ALGORITHM = "ML-DSA-65"
_PUBLIC_KEY_BYTES = 1952
_SEED_BYTES = 32


def secret_file(path: Path, make: Callable[[], bytes], what: str) -> bytes:
    """The secret kept base64 (mode 0600) at `path`, written from `make()` on first use.

    Several server processes may start at once: each writes a complete candidate, and the first hard
    link wins atomically; everyone then reads the winner."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(make()).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass
        finally:
            candidate.unlink()
    try:
        return base64.b64decode(path.read_text().strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError(f"{path}: not base64 ({what})") from None


class LocalMlDsaSigner:
    """ML-DSA-65 (FIPS 204) through pyca `cryptography` (OpenSSL), with the key held in this process."""

    def __init__(self, private_key: mldsa.MLDSA65PrivateKey, key_id: str = "audit-local") -> None:
        self._private = private_key
        self._public = private_key.public_key()
        self._key_id = key_id

    @classmethod
    def generate(cls, key_id: str = "audit-local") -> LocalMlDsaSigner:
        return cls(mldsa.MLDSA65PrivateKey.generate(), key_id)

    @classmethod
    def from_seed(cls, seed: bytes, key_id: str = "audit-local") -> LocalMlDsaSigner:
        if len(seed) != _SEED_BYTES:
            raise CheckpointError(f"an ML-DSA-65 seed is {_SEED_BYTES} bytes, got {len(seed)}")
        return cls(mldsa.MLDSA65PrivateKey.from_seed_bytes(seed), key_id)

    @classmethod
    def load_or_create(cls, path: Path, key_id: str = "audit-local") -> LocalMlDsaSigner:
        """The signing seed kept (base64, mode 0600) at `path`, created on first use."""
        seed = secret_file(path, lambda: cls.generate(key_id)._private.private_bytes_raw(), "an ML-DSA-65 seed")
        return cls.from_seed(seed, key_id)

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def algorithm(self) -> str:
        return ALGORITHM

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._key_id, 1, ALGORITHM, self._private.sign(payload))

    def verify(self, payload: bytes, signature: Signature) -> bool:
        return PublicKeyVerifier([self._public]).verify(payload, signature)

    def private_key(self) -> mldsa.MLDSA65PrivateKey:
        """For signing checkpoint notes with the same key (checkpoint_keys.py); never leaves the process."""
        return self._private

    def public_key(self) -> mldsa.MLDSA65PublicKey:
        return self._public

    def public_pem(self) -> bytes:
        return self._public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class PublicKeyVerifier:
    """Accepts a checkpoint signature made by any of the trusted ML-DSA-65 public keys.

    Several keys cover rotation: every version that ever signed checkpoints stays trusted for them."""

    def __init__(self, keys: Iterable[mldsa.MLDSA65PublicKey]) -> None:
        self._keys = list(keys)
        if not self._keys:
            raise CheckpointError("no public key to verify checkpoint signatures with")

    @property
    def keys(self) -> list[mldsa.MLDSA65PublicKey]:
        return list(self._keys)

    def verify(self, payload: bytes, signature: Signature) -> bool:
        if signature.algorithm != ALGORITHM:
            return False
        for key in self._keys:
            try:
                key.verify(signature.value, payload)
            except InvalidSignature:
                continue
            return True
        return False


def load_public_key(data: bytes, source: str = "public key") -> mldsa.MLDSA65PublicKey:
    """An ML-DSA-65 public key from PEM (SubjectPublicKeyInfo), or its raw 1952 bytes (binary, base64 or hex)."""
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
            if not isinstance(key, mldsa.MLDSA65PublicKey):
                raise CheckpointError(f"{source}: a {type(key).__name__}, not an ML-DSA-65 public key")
            return key
        raw = data
        if len(raw) != _PUBLIC_KEY_BYTES:
            try:
                raw = bytes.fromhex(text.decode())
            except (ValueError, UnicodeDecodeError):
                raw = base64.b64decode(text, validate=True)
        return mldsa.MLDSA65PublicKey.from_public_bytes(raw)
    except CheckpointError:
        raise
    except (ValueError, binascii.Error, TypeError) as exc:
        raise CheckpointError(
            f"{source}: not an ML-DSA-65 public key (PEM, or 1952 raw/base64/hex bytes): {exc}"
        ) from None


def load_public_keys(paths: Iterable[Path]) -> PublicKeyVerifier:
    keys = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{path}: {exc.strerror}") from None
        keys.append(load_public_key(data, str(path)))
    return PublicKeyVerifier(keys)
