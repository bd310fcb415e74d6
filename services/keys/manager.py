"""The keys core: key lifecycle, envelope encryption, signing and per-key authorization.

Every operation takes the caller's SPIFFE ID, checks it against the key's access policy before
anything about the key is revealed, and emits an audit event (who, key, version, operation,
outcome) before returning. Key ids are owned: created once, by their creator, and the ids the mesh
relies on are reserved for the workload that owns them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from ztmesh.keys.algorithms import DEFAULT_ALGORITHM, Algorithm, CryptoProvider, Purpose
from ztmesh.keys.envelope import Envelope, open_sealed, seal
from ztmesh.keys.errors import (
    EnvelopeError,
    InvalidArgument,
    KeyExists,
    KeyNotAccessible,
    KeyNotFound,
    KeysError,
    KeyVersionUnusable,
    LedgerMismatch,
    PermissionDenied,
    ReservedKeyId,
    WrongPurpose,
)
from ztmesh.keys.kek import Kek
from ztmesh.keys.ledger import ShredLedger
from ztmesh.keys.model import (
    AccessPolicy,
    Key,
    KeyVersion,
    Operation,
    VersionState,
    check_key_id,
    reserved_for,
)
from ztmesh.keys.store import KeyStore
from ztmesh.mesh.auditing import AuditEmitter, AuditEvent

KEK_CHECK = "kek_check_value"
LEDGER_ID = "shred_ledger_id"
MAX_PLAINTEXT = 4 * 1024 * 1024
LIST_BATCH = 200
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublicKeyInfo:
    key_id: str
    version: int
    algorithm: Algorithm
    public_key: bytes


class KeyManager:
    def __init__(
        self,
        store: KeyStore,
        provider: CryptoProvider,
        kek: Kek,
        ledger: ShredLedger,
        audit: AuditEmitter,
        *,
        reserved_ids: Mapping[str, str] | None = None,
    ) -> None:
        self._store = store
        self._provider = provider
        self._kek = kek
        self._ledger = ledger
        self._audit = audit
        self._reserved = dict(reserved_ids or {})
        self._private_cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._check_kek()
        self._check_reservations()

    def _check_kek(self) -> None:
        stored = self._store.get_meta(KEK_CHECK)
        if stored is None:
            self._store.set_meta(KEK_CHECK, self._kek.check_value())
        else:
            self._kek.verify_against(stored)
        # A missing or foreign ledger would silently make every key unusable: refuse to start instead.
        expected = self._store.get_meta(LEDGER_ID)
        if expected is None:
            self._store.set_meta(LEDGER_ID, self._ledger.ledger_id)
        elif expected != self._ledger.ledger_id:
            raise LedgerMismatch(
                f"shred ledger {self._ledger.path} (id {self._ledger.ledger_id[:8]}…) is not the one these keys "
                f"were created with (id {expected[:8]}…); restore it or point ZTMESH_SHRED_LEDGER at it"
            )

    def _check_reservations(self) -> None:
        """A reserved id taken by someone else before reservations existed must not pass unnoticed."""
        for key in self._reserved_keys():
            owner = reserved_for(self._reserved, key.key_id)
            if key.owner and key.owner != owner:
                log.error(
                    "key %r is reserved for %s but was created by %s: destroy its versions and let %s create it",
                    key.key_id, owner, key.owner, owner,
                )  # fmt: skip
            elif not key.owner:
                log.warning(
                    "key %r (reserved for %s) predates recorded owners: check its access policy", key.key_id, owner
                )

    def _reserved_keys(self) -> list[Key]:
        """The stored keys whose ids are reserved (exact ids, and every id under a reserved prefix)."""
        found: dict[str, Key] = {}
        for pattern in self._reserved:
            prefix = pattern.removesuffix("*")
            with contextlib.suppress(KeyNotFound):
                found[prefix] = self._store.get_key(prefix)
            after = prefix
            while pattern.endswith("*") and (page := self._store.list_keys(after, LIST_BATCH)):
                under = [k for k in page if k.key_id.startswith(prefix)]
                found.update((k.key_id, k) for k in under)
                if len(under) < len(page):
                    break
                after = page[-1].key_id
        return [key for key_id, key in sorted(found.items()) if reserved_for(self._reserved, key_id)]

    # --- helpers ---------------------------------------------------------------------------

    def _record(
        self, caller: str, operation: str, key_id: str, version: int | None, outcome: str, **details: object
    ) -> None:
        self._audit.emit(
            AuditEvent(
                service="keys",
                action=f"keys.{operation}",
                outcome=outcome,
                caller_spiffe_id=caller,
                resource=f"key/{key_id}" + (f"/v{version}" if version else ""),
                details=dict(details),
            )
        )

    def _authorized_key(self, caller: str, operation: Operation, key_id: str) -> Key:
        """The key, once `caller` is known to be allowed `operation` on it. A caller who holds no grant on
        the key (and did not create it) gets the same answer whether or not it exists."""
        try:
            key: Key | None = self._store.get_key(check_key_id(key_id))
        except KeyNotFound:
            key = None
        if key is not None and key.access_policy.allows(operation, caller):
            return key
        knows_key = key is not None and (key.owner == caller or key.access_policy.grants_anything(caller))
        # Absent keys are audited too: probing is worth seeing, and both answers then take the same path.
        self._record(caller, operation.value, key_id, None, "DENIED", reason="forbidden" if key else "absent")
        if knows_key:
            raise PermissionDenied(caller, operation.value, key_id)
        raise KeyNotAccessible(key_id)

    @staticmethod
    def _usable(key: Key, number: int) -> KeyVersion:
        version = key.version(number)
        if version is None:
            raise KeyNotFound(key.key_id, number)
        if version.state is not VersionState.ENABLED:
            raise KeyVersionUnusable(f"key {key.key_id!r} version {number} is {version.state.value}")
        return version

    @staticmethod
    def _label(key_id: str, version: int) -> bytes:
        return f"{key_id}/{version}".encode()

    def _private(self, key: Key, version: KeyVersion) -> bytes:
        cache_key = (key.key_id, version.version)
        with self._cache_lock:
            if cache_key in self._private_cache:
                self._private_cache.move_to_end(cache_key)
                return self._private_cache[cache_key]
        secret = self._ledger.get(key.key_id, version.version)
        if secret is None or version.wrapped_private is None:
            raise KeyVersionUnusable(f"key {key.key_id!r} version {version.version} has no private material")
        private = self._kek.unwrap(version.wrapped_private, secret, self._label(key.key_id, version.version))
        with self._cache_lock:
            self._private_cache[cache_key] = private
            while len(self._private_cache) > 1024:
                self._private_cache.popitem(last=False)
        return private

    def _forget(self, key_id: str, version: int) -> None:
        with self._cache_lock:
            self._private_cache.pop((key_id, version), None)

    def _new_version(
        self, key_id: str, algorithm: Algorithm, number: int, *, new_key: bool = False
    ) -> tuple[KeyVersion, bytes]:
        """A fresh key pair as version `number`, wrapped under a new ledger secret (also returned)."""
        private, public = self._provider.generate(algorithm)
        secret = self._ledger.create(key_id, number, exclusive=new_key)
        wrapped = self._kek.wrap(private, secret, self._label(key_id, number))
        return KeyVersion(number, VersionState.ENABLED, public, wrapped, datetime.now(UTC)), secret

    # --- lifecycle -------------------------------------------------------------------------

    def create_key(
        self,
        caller: str,
        key_id: str,
        purpose: Purpose,
        algorithm: Algorithm | None = None,
        access_policy: AccessPolicy | None = None,
        labels: dict[str, str] | None = None,
    ) -> Key:
        check_key_id(key_id)
        if not caller:
            raise PermissionDenied(caller, "create", key_id)
        owner = reserved_for(self._reserved, key_id)
        if owner is not None and caller != owner:
            self._record(caller, "create", key_id, None, "DENIED", reason="reserved", reserved_for=owner)
            raise ReservedKeyId(caller, key_id, owner)
        algorithm = algorithm or DEFAULT_ALGORITHM[purpose]
        if algorithm.purpose is not purpose:
            raise InvalidArgument(f"{algorithm.value} cannot be used for {purpose.value}")
        policy = access_policy if access_policy and access_policy.grants else AccessPolicy.owner_only(caller)
        if self._exists(key_id):  # before any ledger write: a taken id's secrets are never touched
            self._record(caller, "create", key_id, None, "DENIED", reason="exists")
            raise KeyExists(key_id)
        version, secret = self._new_version(key_id, algorithm, 1, new_key=True)
        key = Key(key_id, purpose, algorithm, 1, policy, dict(labels or {}), datetime.now(UTC), [version], caller)
        try:
            self._store.create_key(key)
        except BaseException:
            self._ledger.discard(key_id, 1, secret)  # leave no secret behind that would block the id
            raise
        self._record(caller, "create", key_id, 1, "OK", algorithm=algorithm.value)
        return key

    def _exists(self, key_id: str) -> bool:
        try:
            self._store.get_key(key_id)
        except KeyNotFound:
            return False
        return True

    def get_key(self, caller: str, key_id: str) -> Key:
        return self._authorized_key(caller, Operation.GET_PUBLIC_KEY, key_id)

    def list_keys(self, caller: str, page_size: int, page_token: str) -> tuple[list[Key], str]:
        """The keys `caller` may read, a page at a time. The page token is the last *visible* key id, so it
        never names a key the caller may not see."""
        size = min(max(page_size or 100, 1), 1000)
        visible: list[Key] = []
        after = page_token
        while batch := self._store.list_keys(after, LIST_BATCH):
            for key in batch:
                if key.access_policy.allows(Operation.GET_PUBLIC_KEY, caller):
                    visible.append(key)
                    if len(visible) == size:
                        return visible, key.key_id
            after = batch[-1].key_id
        return visible, ""

    def rotate(self, caller: str, key_id: str) -> Key:
        key = self._authorized_key(caller, Operation.ROTATE, key_id)
        version = self._store.add_version(key_id, lambda n: self._new_version(key_id, key.algorithm, n)[0])
        self._record(caller, "rotate", key_id, version.version, "OK")
        return self._store.get_key(key_id)

    def public_key(self, caller: str, key_id: str, version: int = 0) -> PublicKeyInfo:
        key = self._authorized_key(caller, Operation.GET_PUBLIC_KEY, key_id)
        found = key.version(version or key.primary_version)
        if found is None:
            raise KeyNotFound(key_id, version)
        if found.state is VersionState.DESTROYED:
            raise KeyVersionUnusable(f"key {key_id!r} version {found.version} is destroyed")
        return PublicKeyInfo(key_id, found.version, key.algorithm, found.public_key)

    def set_enabled(self, caller: str, key_id: str, version: int, enabled: bool) -> KeyVersion:
        key = self._authorized_key(caller, Operation.MANAGE_VERSIONS, key_id)
        current = key.version(version)
        if current is None:
            raise KeyNotFound(key_id, version)
        if current.state is VersionState.DESTROYED:
            raise KeyVersionUnusable(f"key {key_id!r} version {version} is destroyed and cannot change state")
        state = VersionState.ENABLED if enabled else VersionState.DISABLED
        self._store.set_state(key_id, version, state)
        self._forget(key_id, version)
        self._record(caller, "enable" if enabled else "disable", key_id, version, "OK")
        return self._store.get_key(key_id).version(version)  # type: ignore[return-value]

    def destroy(self, caller: str, key_id: str, version: int) -> KeyVersion:
        """Crypto-shred: erase the ledger secret first (this alone makes every copy useless), then the
        wrapped material and the in-memory cache."""
        key = self._authorized_key(caller, Operation.MANAGE_VERSIONS, key_id)
        if key.version(version) is None:
            raise KeyNotFound(key_id, version)
        self._ledger.erase(key_id, version)
        self._store.set_state(key_id, version, VersionState.DESTROYED)
        self._store.erase_material(key_id, version)
        self._forget(key_id, version)
        self._record(caller, "destroy", key_id, version, "OK")
        return self._store.get_key(key_id).version(version)  # type: ignore[return-value]

    # --- cryptographic operations ----------------------------------------------------------

    def encrypt(self, caller: str, key_id: str, plaintext: bytes, associated_data: bytes = b"") -> tuple[bytes, int]:
        if len(plaintext) > MAX_PLAINTEXT:
            raise InvalidArgument(f"plaintext is {len(plaintext)} bytes; the limit is {MAX_PLAINTEXT}")
        key = self._authorized_key(caller, Operation.ENCRYPT, key_id)
        if key.purpose is not Purpose.ENCRYPT:
            raise WrongPurpose(f"key {key_id!r} is a {key.purpose.value} key, not an encryption key")
        version = self._usable(key, key.primary_version)
        shared, kem_ciphertext = self._provider.encapsulate(key.algorithm, version.public_key)
        envelope = seal(key.algorithm, key_id, version.version, shared, kem_ciphertext, plaintext, associated_data)
        self._record(caller, "encrypt", key_id, version.version, "OK", bytes=len(plaintext))
        return envelope, version.version

    def decrypt(
        self, caller: str, envelope_bytes: bytes, associated_data: bytes = b"", expected_key_id: str = ""
    ) -> tuple[bytes, str, int]:
        envelope = Envelope.parse(envelope_bytes)
        if expected_key_id and envelope.key_id != expected_key_id:
            raise EnvelopeError(f"envelope was made for key {envelope.key_id!r}, not {expected_key_id!r}")
        key = self._authorized_key(caller, Operation.DECRYPT, envelope.key_id)
        if key.algorithm is not envelope.algorithm:
            raise EnvelopeError(
                f"envelope names {envelope.algorithm.value} but key {key.key_id!r} is {key.algorithm.value}"
            )
        version = self._usable(key, envelope.key_version)
        try:
            shared = self._provider.decapsulate(key.algorithm, self._private(key, version), envelope.kem_ciphertext)
        except ValueError as exc:  # malformed KEM ciphertext (wrong length)
            raise EnvelopeError(f"malformed KEM ciphertext: {exc}") from None
        try:
            plaintext = open_sealed(envelope, shared, associated_data)
        except KeysError:
            self._record(caller, "decrypt", key.key_id, version.version, "ERROR", problem="authentication failed")
            raise
        self._record(caller, "decrypt", key.key_id, version.version, "OK")
        return plaintext, key.key_id, version.version

    def sign(self, caller: str, key_id: str, message: bytes) -> tuple[bytes, int, Algorithm]:
        key = self._authorized_key(caller, Operation.SIGN, key_id)
        if key.purpose is not Purpose.SIGN:
            raise WrongPurpose(f"key {key_id!r} is a {key.purpose.value} key, not a signing key")
        version = self._usable(key, key.primary_version)
        signature = self._provider.sign(key.algorithm, self._private(key, version), message)
        self._record(caller, "sign", key_id, version.version, "OK", bytes=len(message))
        return signature, version.version, key.algorithm

    def verify(self, caller: str, key_id: str, version_number: int, message: bytes, signature: bytes) -> bool:
        key = self._authorized_key(caller, Operation.VERIFY, key_id)
        if key.purpose is not Purpose.SIGN:
            raise WrongPurpose(f"key {key_id!r} is a {key.purpose.value} key, not a signing key")
        version = self._usable(key, version_number or key.primary_version)
        valid = self._provider.verify(key.algorithm, version.public_key, message, signature)
        self._record(caller, "verify", key_id, version.version, "OK" if valid else "INVALID")
        return valid

    # --- operations on the store -------------------------------------------------------------

    def rewrap(self, new_kek: Kek) -> int:
        """Re-wrap every live private key under `new_kek` in one transaction, together with the new KEK
        check value, so a crash leaves either all keys under the old KEK or all under the new one."""
        updates: list[tuple[str, int, bytes]] = []
        after = ""
        while page := self._store.list_keys(after, 200):
            for key in page:
                for version in key.versions:
                    secret = self._ledger.get(key.key_id, version.version)
                    if version.wrapped_private is None or secret is None:
                        continue
                    label = self._label(key.key_id, version.version)
                    private = self._kek.unwrap(version.wrapped_private, secret, label)
                    updates.append((key.key_id, version.version, new_kek.wrap(private, secret, label)))
            after = page[-1].key_id
        self._store.rewrap_all(updates, KEK_CHECK, new_kek.check_value())
        self._kek = new_kek
        return len(updates)

    def close(self) -> None:
        self._store.close()
