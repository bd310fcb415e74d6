"""A real keys service (in process, over mTLS) holding a policy-bundle signing pair, an Ed25519 key
and an ML-DSA-65 key, reachable by `ztmesh policy sign` as the operator (`client`) would reach it.

Fixture: `bundle_keys` (a `BundleKeys`); `bundle_keys.sign(folder)` runs `ztmesh policy sign`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mesh import Pki, running, settings_for
from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh.cli import main
from ztmesh.keys.app import build_app
from ztmesh.policy.bundle_signing import fingerprint


@dataclasses.dataclass
class BundleKeys:
    stub: keys_pb2_grpc.KeyServiceStub
    classical: str = "bundle-signer-ed"
    post_quantum: str = "bundle-signer-pq"

    def create(self, key_id: str, algorithm: int) -> None:
        request = keys_pb2.CreateKeyRequest(key_id=key_id, purpose=keys_pb2.KEY_PURPOSE_SIGN, algorithm=algorithm)
        self.stub.CreateKey(request, timeout=10)

    def public_key(self, key_id: str) -> bytes:
        return bytes(self.stub.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id=key_id), timeout=10).public_key)

    def pins(self, *key_ids: str) -> str:
        """The ZTMESH_POLICY_TRUSTED_SIGNERS value trusting these keys (default: the pair)."""
        ids = key_ids or (self.classical, self.post_quantum)
        return ",".join(f"{key_id}@{fingerprint(self.public_key(key_id))}" for key_id in ids)

    def sign(self, folder: Path, *key_ids: str, opa_key: Path | None = None) -> int:
        """`ztmesh policy sign FOLDER --key … --key …` (default: the pair); its exit code."""
        argv = ["policy", "sign", str(folder)]
        for key_id in key_ids or (self.classical, self.post_quantum):
            argv += ["--key", key_id]
        if opa_key is not None:
            argv += ["--opa-key", str(opa_key)]
        return main(argv)


@pytest.fixture
def bundle_keys(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BundleKeys]:
    monkeypatch.setenv("ZTMESH_KEK", "B" * 43 + "=")
    settings = settings_for(pki, tmp_path / "keys")
    with running(build_app(settings), settings) as server:
        monkeypatch.setenv("ZTMESH_CERT_DIR", str(pki.directory))
        monkeypatch.setenv("ZTMESH_KEYS_ADDR", f"localhost:{server.port}")
        with pki.channel("client", server.port) as channel:
            keys = BundleKeys(keys_pb2_grpc.KeyServiceStub(channel))
            keys.create(keys.classical, keys_pb2.ALGORITHM_ED25519)
            keys.create(keys.post_quantum, keys_pb2.ALGORITHM_ML_DSA_65)
            yield keys
