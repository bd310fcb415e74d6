"""The keys that sign checkpoint notes: Ed25519 (what standard note verifiers and witnesses check) and
ML-DSA-65 (post-quantum), held in the data folder (embedded default) or at the keys service.

At the keys service audit creates both keys itself and then insists they are its own: a key created
by anyone else (the "squatted checkpoint key" attack), or one whose public key differs from a
fingerprint the operator pinned, is refused with `CheckpointKeyNotTrusted`, which stops start-up.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh.audit import note
from ztmesh.audit.errors import CheckpointError
from ztmesh.audit.signing import LocalMlDsaSigner, secret_file

_TIMEOUT = 10.0


class CheckpointKeyNotTrusted(CheckpointError):
    """A checkpoint key exists but is not audit's own (other owner, or not the pinned public key)."""


def fingerprint(public_key: bytes) -> str:
    """`sha256:<hex>` of the raw public key: the form `ztmesh keys fingerprint` prints and pins take."""
    return "sha256:" + hashlib.sha256(public_key).hexdigest()


@dataclass(frozen=True)
class NoteKeys:
    """The signers of checkpoint notes and the verifiers for what they signed."""

    signers: tuple[note.NoteSigner, ...]

    def verifiers(self) -> list[note.NoteVerifier]:
        found: list[note.NoteVerifier] = []
        for signer in self.signers:
            found.extend(signer.verifiers())  # type: ignore[attr-defined]
        return found

    def sign(self, head: note.TreeHead) -> str:
        return note.sign(head.text(), self.signers)


# --- local keys (embedded default) ---------------------------------------------------------------------------


def _load_or_create_ed25519(path: Path) -> ed25519.Ed25519PrivateKey:
    """A raw Ed25519 private key kept like the ML-DSA seed (base64, mode 0600), made on first use."""
    raw = secret_file(path, lambda: ed25519.Ed25519PrivateKey.generate().private_bytes_raw(), "an Ed25519 key")
    try:
        return ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    except ValueError:
        raise CheckpointError(f"{path}: not an Ed25519 private key") from None


def local_note_keys(origin: str, ed25519_file: Path, mldsa: LocalMlDsaSigner) -> NoteKeys:
    """Note keys from the data folder: an Ed25519 key file (made on first use) and audit's ML-DSA key."""
    ed = note.LocalNoteSigner(origin, _load_or_create_ed25519(ed25519_file))
    ml = note.LocalNoteSigner(origin, mldsa.private_key())
    return NoteKeys((ed, ml))


# --- keys at the keys service --------------------------------------------------------------------------------

_ALGORITHMS = {
    "ed25519": (keys_pb2.ALGORITHM_ED25519, note.ed25519_verifier),
    "ml-dsa-65": (keys_pb2.ALGORITHM_ML_DSA_65, note.mldsa65_verifier),
}


class KeyServiceNoteSigner:
    """One checkpoint key at the keys service, created by audit and checked to be audit's own."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        origin: str,
        key_id: str,
        algorithm: str,
        owner: str,
        readers: Sequence[str] = (),
        pinned: str = "",
    ) -> None:
        self._stub = keys_pb2_grpc.KeyServiceStub(channel)
        self._origin = origin
        self._key = key_id
        self._proto_algorithm, self._make_verifier = _ALGORITHMS[algorithm]
        self._owner = owner
        self._readers = list(readers)
        self._pinned = pinned
        self._versions: dict[int, note.NoteVerifier] = {}
        self._primary = 0
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._origin

    @property
    def key_id(self) -> bytes:
        return self._versions[self._primary].key_id

    def _error(self, err: grpc.RpcError, doing: str) -> CheckpointError:
        return CheckpointError(f"keys service, {doing} {self._key!r}: {err.code().name}: {err.details()}")

    def ensure(self) -> None:
        """Create the key if it does not exist, then refuse it unless audit owns it (and it is the pinned one)."""
        request = keys_pb2.CreateKeyRequest(
            key_id=self._key, purpose=keys_pb2.KEY_PURPOSE_SIGN, algorithm=self._proto_algorithm
        )
        public = {keys_pb2.KEY_OPERATION_GET_PUBLIC_KEY, keys_pb2.KEY_OPERATION_VERIFY}
        for operation in keys_pb2.KeyOperation.values():
            if operation == keys_pb2.KEY_OPERATION_UNSPECIFIED:
                continue
            ids = [self._owner, *self._readers] if operation in public else [self._owner]
            request.access_policy.grants.add(operation=operation, spiffe_ids=ids)
        try:
            self._stub.CreateKey(request, timeout=_TIMEOUT)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.ALREADY_EXISTS:  # exists: another replica, or someone else
                raise self._error(err, "creating") from None
        try:
            key = self._stub.GetKey(keys_pb2.GetKeyRequest(key_id=self._key), timeout=_TIMEOUT)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise CheckpointKeyNotTrusted(
                    f"checkpoint key {self._key!r} exists at the keys service but audit holds no grant on it: "
                    "someone else created it; delete it (or choose another ZTMESH_AUDIT_SIGNING_KEY) and restart"
                ) from None
            raise self._error(err, "reading") from None
        if key.owner != self._owner:
            raise CheckpointKeyNotTrusted(
                f"checkpoint key {self._key!r} is owned by {key.owner or 'nobody recorded'}, not by audit "
                f"({self._owner}): refusing to sign checkpoints with a key audit does not own"
            )
        if key.algorithm != self._proto_algorithm:
            raise CheckpointKeyNotTrusted(f"checkpoint key {self._key!r} is not a {self._make_verifier.__name__} key")
        self._load_version(0)
        if self._pinned and fingerprint(self._versions[self._primary].public_key) != self._pinned:
            raise CheckpointKeyNotTrusted(
                f"checkpoint key {self._key!r}: its public key is not the pinned {self._pinned}"
            )

    def _load_version(self, version: int) -> note.NoteVerifier:
        try:
            reply = self._stub.GetPublicKey(
                keys_pb2.GetPublicKeyRequest(key_id=self._key, version=version), timeout=_TIMEOUT
            )
        except grpc.RpcError as err:
            raise self._error(err, "fetching the public key of") from None
        verifier = self._make_verifier(self._origin, bytes(reply.public_key))  # raw bytes, as the keys service sends
        with self._lock:
            self._versions[reply.version] = verifier
            if version == 0:
                self._primary = reply.version
        return verifier

    def sign(self, text: bytes) -> bytes:
        try:
            reply = self._stub.Sign(keys_pb2.SignRequest(key_id=self._key, message=text), timeout=_TIMEOUT)
        except grpc.RpcError as err:
            raise self._error(err, "signing with") from None
        if reply.key_version not in self._versions:  # rotated since: learn the new version's key ID
            self._load_version(reply.key_version)
        self._primary = reply.key_version
        return bytes(reply.signature)

    def verifiers(self) -> list[note.NoteVerifier]:
        with self._lock:
            return list(self._versions.values())
