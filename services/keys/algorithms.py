"""Key algorithms and the provider seam that implements them.

`CryptoProvider` is the one interface behind which the primitives live; `OpenSslProvider` uses
pyca `cryptography` (OpenSSL's ML-KEM and ML-DSA). Private keys are handled as their compact
seeds (FIPS 203 d||z, FIPS 204 xi, the raw X25519/Ed25519 scalars), so a stored key is small and
provider-neutral.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519


class Purpose(enum.Enum):
    ENCRYPT = "encrypt"
    SIGN = "sign"


class Algorithm(enum.Enum):
    ML_KEM_768 = "ML-KEM-768"
    ML_KEM_1024 = "ML-KEM-1024"
    X25519_ML_KEM_768 = "X25519-ML-KEM-768"
    ML_DSA_65 = "ML-DSA-65"
    ML_DSA_87 = "ML-DSA-87"
    ED25519 = "Ed25519"

    @property
    def purpose(self) -> Purpose:
        return Purpose.SIGN if self in _SIGNATURE_ALGORITHMS else Purpose.ENCRYPT

    @property
    def code(self) -> int:
        """Stable one-byte identifier used in envelopes."""
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> Algorithm:
        for algorithm, value in _CODES.items():
            if value == code:
                return algorithm
        raise ValueError(f"unknown algorithm code {code}")


_SIGNATURE_ALGORITHMS = {Algorithm.ML_DSA_65, Algorithm.ML_DSA_87, Algorithm.ED25519}
_CODES = {
    Algorithm.ML_KEM_768: 1,
    Algorithm.ML_KEM_1024: 2,
    Algorithm.X25519_ML_KEM_768: 3,
    Algorithm.ML_DSA_65: 10,
    Algorithm.ML_DSA_87: 11,
    Algorithm.ED25519: 12,
}
DEFAULT_ALGORITHM = {Purpose.ENCRYPT: Algorithm.ML_KEM_768, Purpose.SIGN: Algorithm.ML_DSA_65}

# X-Wing's label (draft-connolly-cfrg-xwing-kem): domain separation for the hybrid combiner.
XWING_LABEL = b"\\.//^\\"


def public_key_fingerprint(public_key: bytes) -> str:
    """How a public key is pinned (e.g. a trusted plugin signer): `sha256:` and the hex SHA-256 of its raw bytes."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public_key)
    return "sha256:" + digest.finalize().hex()


class CryptoProvider(Protocol):
    name: str

    def generate(self, algorithm: Algorithm) -> tuple[bytes, bytes]:
        """A new key pair as (private seed, public key)."""
        ...

    def public_key(self, algorithm: Algorithm, private: bytes) -> bytes: ...

    def encapsulate(self, algorithm: Algorithm, public: bytes) -> tuple[bytes, bytes]:
        """(32-byte shared secret, KEM ciphertext)."""
        ...

    def decapsulate(self, algorithm: Algorithm, private: bytes, ciphertext: bytes) -> bytes: ...

    def sign(self, algorithm: Algorithm, private: bytes, message: bytes) -> bytes: ...

    def verify(self, algorithm: Algorithm, public: bytes, message: bytes, signature: bytes) -> bool: ...


# Typed as Any: the pyca key classes share no base class that declares these constructors.
_MLKEM: dict[Algorithm, Any] = {
    Algorithm.ML_KEM_768: mlkem.MLKEM768PrivateKey,
    Algorithm.ML_KEM_1024: mlkem.MLKEM1024PrivateKey,
}
_MLKEM_PUBLIC: dict[Algorithm, Any] = {
    Algorithm.ML_KEM_768: mlkem.MLKEM768PublicKey,
    Algorithm.ML_KEM_1024: mlkem.MLKEM1024PublicKey,
}
_MLDSA: dict[Algorithm, Any] = {
    Algorithm.ML_DSA_65: mldsa.MLDSA65PrivateKey,
    Algorithm.ML_DSA_87: mldsa.MLDSA87PrivateKey,
}
_MLDSA_PUBLIC: dict[Algorithm, Any] = {
    Algorithm.ML_DSA_65: mldsa.MLDSA65PublicKey,
    Algorithm.ML_DSA_87: mldsa.MLDSA87PublicKey,
}
_MLKEM768_SEED = 64
_MLKEM768_PUBLIC = 1184


def xwing_combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    """The hybrid shared secret: SHA3-256(ss_M || ss_X || ct_X || pk_X || label).

    Binding the X25519 ciphertext and public key keeps the combination secure if either
    component holds (X-Wing's argument; ML-KEM's ciphertext is bound by its own FO transform)."""
    digest = hashes.Hash(hashes.SHA3_256())
    for part in (ss_m, ss_x, ct_x, pk_x, XWING_LABEL):
        digest.update(part)
    return digest.finalize()


class OpenSslProvider:
    """pyca `cryptography` on OpenSSL 3.5+: ML-KEM, ML-DSA, X25519, Ed25519."""

    name = "openssl"

    def generate(self, algorithm: Algorithm) -> tuple[bytes, bytes]:
        if algorithm in _MLKEM:
            kem_key = _MLKEM[algorithm].generate()
            return kem_key.private_bytes_raw(), kem_key.public_key().public_bytes_raw()
        if algorithm is Algorithm.X25519_ML_KEM_768:
            kem_key = mlkem.MLKEM768PrivateKey.generate()
            ecdh = x25519.X25519PrivateKey.generate()
            private = kem_key.private_bytes_raw() + ecdh.private_bytes_raw()
            return private, self.public_key(algorithm, private)
        if algorithm in _MLDSA:
            dsa_key = _MLDSA[algorithm].generate()
            return dsa_key.private_bytes_raw(), dsa_key.public_key().public_bytes_raw()
        ed_key = ed25519.Ed25519PrivateKey.generate()
        return ed_key.private_bytes_raw(), ed_key.public_key().public_bytes_raw()

    def public_key(self, algorithm: Algorithm, private: bytes) -> bytes:
        if algorithm in _MLKEM:
            return _MLKEM[algorithm].from_seed_bytes(private).public_key().public_bytes_raw()
        if algorithm is Algorithm.X25519_ML_KEM_768:
            kem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(private[:_MLKEM768_SEED])
            ecdh = x25519.X25519PrivateKey.from_private_bytes(private[_MLKEM768_SEED:])
            return kem_key.public_key().public_bytes_raw() + ecdh.public_key().public_bytes_raw()
        if algorithm in _MLDSA:
            return _MLDSA[algorithm].from_seed_bytes(private).public_key().public_bytes_raw()
        return ed25519.Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()

    def encapsulate(self, algorithm: Algorithm, public: bytes) -> tuple[bytes, bytes]:
        if algorithm in _MLKEM_PUBLIC:
            return _MLKEM_PUBLIC[algorithm].from_public_bytes(public).encapsulate()
        if algorithm is Algorithm.X25519_ML_KEM_768:
            pk_m, pk_x = public[:_MLKEM768_PUBLIC], public[_MLKEM768_PUBLIC:]
            ss_m, ct_m = mlkem.MLKEM768PublicKey.from_public_bytes(pk_m).encapsulate()
            ephemeral = x25519.X25519PrivateKey.generate()
            ct_x = ephemeral.public_key().public_bytes_raw()
            ss_x = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(pk_x))
            return xwing_combine(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x
        raise ValueError(f"{algorithm.value} is not a KEM")

    def decapsulate(self, algorithm: Algorithm, private: bytes, ciphertext: bytes) -> bytes:
        if algorithm in _MLKEM:
            return _MLKEM[algorithm].from_seed_bytes(private).decapsulate(ciphertext)
        if algorithm is Algorithm.X25519_ML_KEM_768:
            kem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(private[:_MLKEM768_SEED])
            ecdh = x25519.X25519PrivateKey.from_private_bytes(private[_MLKEM768_SEED:])
            ct_m, ct_x = ciphertext[:-32], ciphertext[-32:]
            ss_m = kem_key.decapsulate(ct_m)
            ss_x = ecdh.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
            return xwing_combine(ss_m, ss_x, ct_x, ecdh.public_key().public_bytes_raw())
        raise ValueError(f"{algorithm.value} is not a KEM")

    def sign(self, algorithm: Algorithm, private: bytes, message: bytes) -> bytes:
        if algorithm in _MLDSA:
            return _MLDSA[algorithm].from_seed_bytes(private).sign(message)
        if algorithm is Algorithm.ED25519:
            return ed25519.Ed25519PrivateKey.from_private_bytes(private).sign(message)
        raise ValueError(f"{algorithm.value} is not a signature algorithm")

    def verify(self, algorithm: Algorithm, public: bytes, message: bytes, signature: bytes) -> bool:
        try:
            if algorithm in _MLDSA_PUBLIC:
                _MLDSA_PUBLIC[algorithm].from_public_bytes(public).verify(signature, message)
            elif algorithm is Algorithm.ED25519:
                ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
            else:
                raise ValueError(f"{algorithm.value} is not a signature algorithm")
        except InvalidSignature:
            return False
        return True
