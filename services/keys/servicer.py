"""KeyService over gRPC: validate, convert protobuf <-> core types, call KeyManager, map errors."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2

from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh.keys import errors
from ztmesh.keys.algorithms import Algorithm, Purpose
from ztmesh.keys.manager import KeyManager
from ztmesh.keys.model import AccessPolicy, Key, KeyVersion, Operation, VersionState
from ztmesh.mesh.auditing import DeferringEmitter
from ztmesh.mesh.edge import Edge, caller_id

# Which core error becomes which status code, most specific first (audit outages: the mesh's rules).
EDGE = Edge(
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.KeyNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.KeyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.EnvelopeError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.KeyVersionUnusable, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.WrongPurpose, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.KeysError, grpc.StatusCode.INTERNAL),
)

_ALGORITHMS = {
    keys_pb2.ALGORITHM_ML_KEM_768: Algorithm.ML_KEM_768,
    keys_pb2.ALGORITHM_ML_KEM_1024: Algorithm.ML_KEM_1024,
    keys_pb2.ALGORITHM_X25519_ML_KEM_768: Algorithm.X25519_ML_KEM_768,
    keys_pb2.ALGORITHM_ML_DSA_65: Algorithm.ML_DSA_65,
    keys_pb2.ALGORITHM_ML_DSA_87: Algorithm.ML_DSA_87,
    keys_pb2.ALGORITHM_ED25519: Algorithm.ED25519,
}
_ALGORITHM_CODES = {v: k for k, v in _ALGORITHMS.items()}
_PURPOSES = {keys_pb2.KEY_PURPOSE_ENCRYPT: Purpose.ENCRYPT, keys_pb2.KEY_PURPOSE_SIGN: Purpose.SIGN}
_PURPOSE_CODES = {v: k for k, v in _PURPOSES.items()}
_STATES = {
    VersionState.ENABLED: keys_pb2.KEY_VERSION_STATE_ENABLED,
    VersionState.DISABLED: keys_pb2.KEY_VERSION_STATE_DISABLED,
    VersionState.DESTROYED: keys_pb2.KEY_VERSION_STATE_DESTROYED,
}
_OPERATIONS = {
    keys_pb2.KEY_OPERATION_ENCRYPT: Operation.ENCRYPT,
    keys_pb2.KEY_OPERATION_DECRYPT: Operation.DECRYPT,
    keys_pb2.KEY_OPERATION_SIGN: Operation.SIGN,
    keys_pb2.KEY_OPERATION_VERIFY: Operation.VERIFY,
    keys_pb2.KEY_OPERATION_GET_PUBLIC_KEY: Operation.GET_PUBLIC_KEY,
    keys_pb2.KEY_OPERATION_ROTATE: Operation.ROTATE,
    keys_pb2.KEY_OPERATION_MANAGE_VERSIONS: Operation.MANAGE_VERSIONS,
}
_OPERATION_CODES = {v: k for k, v in _OPERATIONS.items()}


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def version_to_proto(v: KeyVersion) -> keys_pb2.KeyVersion:
    return keys_pb2.KeyVersion(
        version=v.version,
        state=_STATES[v.state],
        create_time=_timestamp(v.created_at),
        destroy_time=_timestamp(v.destroyed_at),
    )


def key_to_proto(key: Key) -> keys_pb2.Key:
    grants = [
        keys_pb2.KeyGrant(operation=_OPERATION_CODES[op], spiffe_ids=list(ids))
        for op, ids in key.access_policy.grants.items()
    ]
    return keys_pb2.Key(
        key_id=key.key_id,
        purpose=_PURPOSE_CODES[key.purpose],
        algorithm=_ALGORITHM_CODES[key.algorithm],
        primary_version=key.primary_version,
        versions=[version_to_proto(v) for v in key.versions],
        access_policy=keys_pb2.KeyAccessPolicy(grants=grants),
        labels=key.labels,
        create_time=_timestamp(key.created_at),
        owner=key.owner,
    )


def policy_from_proto(message: keys_pb2.KeyAccessPolicy) -> AccessPolicy:
    grants: dict[Operation, tuple[str, ...]] = {}
    for grant in message.grants:
        if grant.operation not in _OPERATIONS:
            raise errors.InvalidArgument(f"access_policy: unknown operation {grant.operation}")
        grants[_OPERATIONS[grant.operation]] = grants.get(_OPERATIONS[grant.operation], ()) + tuple(grant.spiffe_ids)
    return AccessPolicy(grants)


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    """Encrypt and Decrypt (the hot RPCs) are served from the loop: the key store and the KEM run in a
    thread and their audit records are made durable on the loop (`audit`, the manager's emitter); the
    rest are blocking handlers."""

    def __init__(self, manager: KeyManager, audit: DeferringEmitter) -> None:
        self.manager = manager
        self.audit = audit

    @EDGE.rpc
    def CreateKey(self, request: keys_pb2.CreateKeyRequest, context: grpc.ServicerContext) -> keys_pb2.Key:
        if request.purpose not in _PURPOSES:
            raise errors.InvalidArgument("purpose: must be KEY_PURPOSE_ENCRYPT or KEY_PURPOSE_SIGN")
        algorithm = _ALGORITHMS.get(request.algorithm) if request.algorithm else None
        if request.algorithm and algorithm is None:
            raise errors.InvalidArgument(f"algorithm: unknown value {request.algorithm}")
        key = self.manager.create_key(
            caller_id(),
            request.key_id,
            _PURPOSES[request.purpose],
            algorithm,
            policy_from_proto(request.access_policy),
            dict(request.labels),
        )
        return key_to_proto(key)

    @EDGE.rpc
    def GetKey(self, request: keys_pb2.GetKeyRequest, context: grpc.ServicerContext) -> keys_pb2.Key:
        return key_to_proto(self.manager.get_key(caller_id(), request.key_id))

    @EDGE.rpc
    def ListKeys(self, request: keys_pb2.ListKeysRequest, context: grpc.ServicerContext) -> keys_pb2.ListKeysResponse:
        keys, token = self.manager.list_keys(caller_id(), request.page_size, request.page_token)
        return keys_pb2.ListKeysResponse(keys=[key_to_proto(k) for k in keys], next_page_token=token)

    @EDGE.rpc
    def GetPublicKey(self, request: keys_pb2.GetPublicKeyRequest, context: grpc.ServicerContext) -> keys_pb2.PublicKey:
        info = self.manager.public_key(caller_id(), request.key_id, request.version)
        return keys_pb2.PublicKey(
            key_id=info.key_id,
            version=info.version,
            algorithm=_ALGORITHM_CODES[info.algorithm],
            public_key=info.public_key,
        )

    @EDGE.rpc
    def RotateKey(self, request: keys_pb2.RotateKeyRequest, context: grpc.ServicerContext) -> keys_pb2.Key:
        return key_to_proto(self.manager.rotate(caller_id(), request.key_id))

    @EDGE.rpc
    async def Encrypt(
        self, request: keys_pb2.EncryptRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.EncryptResponse:
        envelope, version = await self.audit.run_audited(
            self.manager.encrypt, caller_id(), request.key_id, request.plaintext, request.associated_data
        )
        return keys_pb2.EncryptResponse(envelope=envelope, key_version=version)

    @EDGE.rpc
    async def Decrypt(
        self, request: keys_pb2.DecryptRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.DecryptResponse:
        plaintext, key_id, version = await self.audit.run_audited(
            self.manager.decrypt, caller_id(), request.envelope, request.associated_data, request.key_id
        )
        return keys_pb2.DecryptResponse(plaintext=plaintext, key_id=key_id, key_version=version)

    @EDGE.rpc
    def Sign(self, request: keys_pb2.SignRequest, context: grpc.ServicerContext) -> keys_pb2.SignResponse:
        signature, version, algorithm = self.manager.sign(caller_id(), request.key_id, request.message)
        return keys_pb2.SignResponse(signature=signature, key_version=version, algorithm=_ALGORITHM_CODES[algorithm])

    @EDGE.rpc
    def Verify(self, request: keys_pb2.VerifyRequest, context: grpc.ServicerContext) -> keys_pb2.VerifyResponse:
        valid = self.manager.verify(
            caller_id(), request.key_id, request.key_version, request.message, request.signature
        )
        return keys_pb2.VerifyResponse(valid=valid)

    @EDGE.rpc
    def DisableKeyVersion(
        self, request: keys_pb2.KeyVersionRequest, context: grpc.ServicerContext
    ) -> keys_pb2.KeyVersion:
        return version_to_proto(self.manager.set_enabled(caller_id(), request.key_id, request.version, False))

    @EDGE.rpc
    def EnableKeyVersion(
        self, request: keys_pb2.KeyVersionRequest, context: grpc.ServicerContext
    ) -> keys_pb2.KeyVersion:
        return version_to_proto(self.manager.set_enabled(caller_id(), request.key_id, request.version, True))

    @EDGE.rpc
    def DestroyKeyVersion(
        self, request: keys_pb2.KeyVersionRequest, context: grpc.ServicerContext
    ) -> keys_pb2.KeyVersion:
        return version_to_proto(self.manager.destroy(caller_id(), request.key_id, request.version))
