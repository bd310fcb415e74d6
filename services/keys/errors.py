"""Errors of the keys service. Each maps to one gRPC status code at the edge (servicer.py)."""

from __future__ import annotations


class KeysError(Exception):
    """Root of every keys-service error."""


class InvalidArgument(KeysError):
    """A request field is missing or malformed."""


class KeyNotFound(KeysError):
    def __init__(self, key_id: str, version: int | None = None) -> None:
        where = f"key {key_id!r}" + (f" version {version}" if version else "")
        super().__init__(f"{where} does not exist")


class KeyNotAccessible(KeyNotFound):
    """The key does not exist, or the caller holds no grant on it: one answer for both, so a caller
    without grants cannot probe which key ids exist."""

    def __init__(self, key_id: str) -> None:
        KeysError.__init__(self, f"key {key_id!r} not found or not accessible")


class KeyExists(KeysError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"key {key_id!r} already exists")


class KeyVersionUnusable(KeysError):
    """The version is disabled or destroyed (FAILED_PRECONDITION)."""


class WrongPurpose(KeysError):
    """E.g. signing with an encryption key (FAILED_PRECONDITION)."""


class PermissionDenied(KeysError):
    def __init__(self, caller: str, operation: str, key_id: str) -> None:
        super().__init__(f"{caller or 'an unidentified caller'} may not {operation} with key {key_id!r}")


class ReservedKeyId(PermissionDenied):
    """The key id is reserved for one workload of the mesh (e.g. the audit checkpoint key)."""

    def __init__(self, caller: str, key_id: str, owner: str) -> None:
        KeysError.__init__(
            self,
            f"key id {key_id!r} is reserved for {owner} (ZTMESH_KEY_RESERVED_IDS); "
            f"{caller or 'an unidentified caller'} may not create it",
        )


class EnvelopeError(KeysError):
    """An envelope is malformed, tampered with, bound to other associated data, or for another key."""


class WrongKek(KeysError):
    """The key-encryption key does not match the one the store was created with."""


class KekMissing(KeysError):
    """No key-encryption key was configured."""


class LedgerMismatch(KeysError):
    """The shred ledger is missing or is not the one the key store was created with."""
