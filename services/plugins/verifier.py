"""Whether a plugin module's signature counts: only by a key on the operator's trusted-signer list, pinned
by public-key fingerprint, with an allowed algorithm (ML-DSA by default), verified here with that key.

The keys service only supplies the public key at registration (`KeyService.GetPublicKey`); the pin
decides whether it is trusted, so a key id rebound at the keys service (or a forged reply) is not.
Loading a stored module checks its kept signature again, offline, against the current list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import grpc

from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh.keys.algorithms import Algorithm, OpenSslProvider, Purpose, public_key_fingerprint
from ztmesh.plugins.errors import SignatureRejected
from ztmesh.plugins.manifest import ModuleSignature

TRUSTED_SIGNERS = "ZTMESH_PLUGIN_TRUSTED_SIGNERS"
SIGNER_ALGORITHMS = "ZTMESH_PLUGIN_SIGNER_ALGORITHMS"
_ENTRY = re.compile(r"^(?P<key_id>[a-z0-9][a-z0-9._-]{0,127})@(?P<fingerprint>sha256:[0-9a-f]{64})$")


@dataclass(frozen=True)
class TrustedSigner:
    key_id: str
    fingerprint: str  # sha256:<hex> of the raw public key (`ztmesh keys fingerprint KEY_ID`)


def trusted_signer_problem(entry: str) -> str | None:
    """Why `entry` is not a trusted-signer entry, or None."""
    if _ENTRY.match(entry.strip().lower()):
        return None
    return f"{entry!r} must be KEY_ID@sha256:<64 hex digits> (print it with `ztmesh keys fingerprint KEY_ID`)"


def parse_trusted_signers(entries: Iterable[str]) -> tuple[TrustedSigner, ...]:
    signers = []
    for entry in entries:
        problem = trusted_signer_problem(entry)
        if problem:
            raise ValueError(problem)
        match = _ENTRY.match(entry.strip().lower())
        assert match is not None
        signers.append(TrustedSigner(match["key_id"], match["fingerprint"]))
    return tuple(signers)


def algorithm_problem(name: str) -> str | None:
    signing = [a.value for a in Algorithm if a.purpose is Purpose.SIGN]
    return None if name in signing else f"{name!r} is not a signature algorithm; choose from {', '.join(signing)}"


class PublicKeySource(Protocol):
    def public_key(self, key_id: str, version: int) -> tuple[int, str, bytes]:
        """(version, algorithm name, raw public key) of `key_id` (version 0: the primary one)."""
        ...


class KeyServicePublicKeys:
    """Public keys from the keys service over mTLS, with the plugins workload's own certificate (the key's
    policy must grant it `get_public_key`)."""

    def __init__(self, channel: grpc.Channel, timeout: float = 5.0) -> None:
        self._stub = keys_pb2_grpc.KeyServiceStub(channel)
        self._timeout = timeout

    def public_key(self, key_id: str, version: int) -> tuple[int, str, bytes]:
        request = keys_pb2.GetPublicKeyRequest(key_id=key_id, version=version)
        try:
            reply = self._stub.GetPublicKey(request, timeout=self._timeout)
        except grpc.RpcError as err:
            # Fail closed: a check that cannot happen is a rejection, with the reason.
            raise SignatureRejected(
                f"cannot fetch the public key of {key_id!r}: {err.code().name}: {err.details()}"
            ) from None
        name = keys_pb2.Algorithm.Name(reply.algorithm).removeprefix("ALGORITHM_")
        return reply.version, Algorithm[name].value if name in Algorithm.__members__ else name, reply.public_key


class SignerTrust:
    """The trusted-signer list and allowed algorithms, and the checks that make a signature count."""

    def __init__(self, signers: Iterable[TrustedSigner], algorithms: Iterable[str], keys: PublicKeySource) -> None:
        self._signers = tuple(signers)
        self._algorithms = frozenset(algorithms)
        self._keys = keys
        self._provider = OpenSslProvider()

    @property
    def empty(self) -> bool:
        return not self._signers

    def attest(self, key_id: str, key_version: int, message: bytes, signature: bytes) -> ModuleSignature:
        """At registration: the signature, once it is known to be by a trusted signer and to verify."""
        if not any(s.key_id == key_id for s in self._signers):
            raise SignatureRejected(f"key {key_id!r} is not a trusted plugin signer ({TRUSTED_SIGNERS})")
        version, algorithm, public_key = self._keys.public_key(key_id, key_version)
        signed = ModuleSignature(key_id, version, algorithm, public_key, signature)
        self.check(signed, message)
        return signed

    def check(self, signed: ModuleSignature, message: bytes) -> None:
        """Raise SignatureRejected unless `signed` is by a pinned key, in an allowed algorithm, over `message`."""
        where = f"key {signed.key_id!r} version {signed.key_version}"
        if signed.algorithm not in self._algorithms:
            raise SignatureRejected(
                f"{where} is {signed.algorithm}; plugin signatures must be {', '.join(sorted(self._algorithms))} "
                f"({SIGNER_ALGORITHMS})"
            )
        fingerprint = public_key_fingerprint(signed.public_key)
        if TrustedSigner(signed.key_id, fingerprint) not in self._signers:
            raise SignatureRejected(f"{where} ({fingerprint}) is not on the trusted-signer list ({TRUSTED_SIGNERS})")
        try:
            valid = self._provider.verify(Algorithm(signed.algorithm), signed.public_key, message, signed.signature)
        except ValueError:  # a public key or signature of the wrong shape
            valid = False
        if not valid:
            raise SignatureRejected(
                f"signature by {where} does not verify over this module and manifest (tampered or wrong key)"
            )
