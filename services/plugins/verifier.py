"""Signature verification of plugin modules by the keys service (KeyService.Verify over mTLS)."""

from __future__ import annotations

import grpc

from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh.plugins.errors import SignatureRejected


class KeyServiceVerifier:
    def __init__(self, channel: grpc.Channel, timeout: float = 5.0) -> None:
        self._stub = keys_pb2_grpc.KeyServiceStub(channel)
        self._timeout = timeout

    def verify(self, key_id: str, key_version: int, message: bytes, signature: bytes) -> bool:
        request = keys_pb2.VerifyRequest(key_id=key_id, key_version=key_version, message=message, signature=signature)
        try:
            return bool(self._stub.Verify(request, timeout=self._timeout).valid)
        except grpc.RpcError as err:
            # Fail closed: a verification that cannot happen is a rejection, with the reason.
            raise SignatureRejected(f"cannot verify with key {key_id!r}: {err.code().name}: {err.details()}") from None
