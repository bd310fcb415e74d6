"""Checkpoint signing by the keys service (ML-DSA-65 over gRPC/mTLS), and verification with the public
keys it publishes. The audit service never holds the private key."""

from __future__ import annotations

import threading
from typing import Any

import grpc

from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh.audit.chain import Signature
from ztmesh.audit.errors import CheckpointError
from ztmesh.audit.signing import ALGORITHM, PublicKeyVerifier, load_public_key

_TIMEOUT = 10.0


class KeyServiceSigner:
    """Signs with key `key_id` at the keys service, creating it (ML-DSA-65, purpose sign) on first use.

    The key is created so that only `owner` (audit's own SPIFFE ID) may sign or manage it, while every
    workload of `readers` (e.g. `spiffe://ztmesh.local/*`) may fetch its public keys and verify."""

    def __init__(self, channel: grpc.Channel, key_id: str, owner: str = "", readers: str = "") -> None:
        self._stub = keys_pb2_grpc.KeyServiceStub(channel)
        self._key_id = key_id
        self._owner = owner
        self._readers = readers
        self._public: dict[int, Any] = {}
        self._lock = threading.Lock()

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def algorithm(self) -> str:
        return ALGORITHM

    def ensure_key(self) -> None:
        try:
            self._stub.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id=self._key_id), timeout=_TIMEOUT)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise CheckpointError(f"keys service: {err.code().name}: {err.details()}") from None
            request = keys_pb2.CreateKeyRequest(
                key_id=self._key_id, purpose=keys_pb2.KEY_PURPOSE_SIGN, algorithm=keys_pb2.ALGORITHM_ML_DSA_65
            )
            if self._owner:
                public = {keys_pb2.KEY_OPERATION_GET_PUBLIC_KEY, keys_pb2.KEY_OPERATION_VERIFY}
                for operation in keys_pb2.KeyOperation.values():
                    if operation == keys_pb2.KEY_OPERATION_UNSPECIFIED:
                        continue
                    ids = [self._owner, self._readers] if operation in public and self._readers else [self._owner]
                    request.access_policy.grants.add(operation=operation, spiffe_ids=ids)
            try:
                self._stub.CreateKey(request, timeout=_TIMEOUT)
            except grpc.RpcError as again:
                if again.code() != grpc.StatusCode.ALREADY_EXISTS:  # another replica won the race
                    raise CheckpointError(f"keys service: {again.code().name}: {again.details()}") from None

    def sign(self, payload: bytes) -> Signature:
        try:
            reply = self._stub.Sign(keys_pb2.SignRequest(key_id=self._key_id, message=payload), timeout=_TIMEOUT)
        except grpc.RpcError as err:
            raise CheckpointError(f"keys service could not sign: {err.code().name}: {err.details()}") from None
        if reply.algorithm != keys_pb2.ALGORITHM_ML_DSA_65:
            raise CheckpointError(f"key {self._key_id!r} is not an ML-DSA-65 key")
        return Signature(self._key_id, reply.key_version, ALGORITHM, reply.signature)

    def public_key(self, version: int) -> Any:
        """The public key of `version`, None if that version does not exist. An unreachable keys service
        raises: "cannot check" must never read as "forged"."""
        with self._lock:
            if version not in self._public:
                request = keys_pb2.GetPublicKeyRequest(key_id=self._key_id, version=version)
                try:
                    reply = self._stub.GetPublicKey(request, timeout=_TIMEOUT)
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.NOT_FOUND:
                        return None
                    raise CheckpointError(f"keys service: {err.code().name}: {err.details()}") from None
                self._public[version] = load_public_key(reply.public_key, f"{self._key_id} v{version}")
            return self._public[version]

    def verify(self, payload: bytes, signature: Signature) -> bool:
        if signature.key_id != self._key_id or signature.key_version <= 0:
            return False
        key = self.public_key(signature.key_version)
        return key is not None and PublicKeyVerifier([key]).verify(payload, signature)
