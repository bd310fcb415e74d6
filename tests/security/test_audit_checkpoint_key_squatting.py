"""Attack: a squatted checkpoint key. A compromised workload pre-creates the key ids the audit service
signs checkpoints with, so that it can re-sign a rewritten log later. Before, audit adopted whatever
key it found under its id. Now the keys service refuses the squat (reserved ids), and even where an
operator turned reservations off, audit refuses a key it does not own, or one whose public key is
not the pinned one, and stops instead of signing. Through real keys and audit services over mTLS."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.audit.factory import events
from tests.support.mesh import Pki, running, settings_for
from ztmesh._proto.audit.v1 import audit_pb2, audit_pb2_grpc
from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh.audit.app import build_app as build_audit_app
from ztmesh.audit.checkpoint_keys import fingerprint
from ztmesh.audit.client import GrpcAuditSink
from ztmesh.keys.app import build_app as build_keys_app
from ztmesh.mesh.errors import FatalMisconfiguration
from ztmesh.mesh.server import MeshServer

CHECKPOINT_KEYS = (("audit-checkpoints", keys_pb2.ALGORITHM_ML_DSA_65),
                   ("audit-checkpoints-ed25519", keys_pb2.ALGORITHM_ED25519))  # fmt: skip


@pytest.fixture
def keys_service(pki: Pki, tmp_path, monkeypatch, request):
    monkeypatch.setenv("ZTMESH_KEK", "A" * 43 + "=")
    monkeypatch.setenv("ZTMESH_KEY_RESERVED_IDS", getattr(request, "param", "audit-checkpoints*=audit"))
    settings = settings_for(pki, tmp_path / "keys")
    with running(build_keys_app(settings), settings) as server:
        yield server


def keys_stub(pki: Pki, identity: str, port: int) -> keys_pb2_grpc.KeyServiceStub:
    if not (pki.directory / f"{identity}.crt").exists():
        pki.issue(identity)
    return keys_pb2_grpc.KeyServiceStub(pki.channel(identity, port))


def start_audit(pki: Pki, tmp_path, monkeypatch, keys_port: int, pins: str = ""):
    monkeypatch.setenv("ZTMESH_AUDIT_SIGNER", "keys")
    monkeypatch.setenv("ZTMESH_AUDIT_SIGNING_KEY_PINS", pins)
    settings = settings_for(pki, tmp_path / "audit", keys_addr=f"localhost:{keys_port}")
    return running(build_audit_app(settings), settings)


def wait_for(server: MeshServer, pki: Pki) -> str:
    """'fatal: …' once the server gave up for good, 'serving' once ready (30 s at most)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.fatal is not None:
            return f"fatal: {server.fatal}"
        status = health_pb2_grpc.HealthStub(pki.channel("client", server.port)).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        if status.status == health_pb2.HealthCheckResponse.SERVING:
            return "serving"
        time.sleep(0.1)
    raise AssertionError("audit neither served nor gave up within 30 s")


def squat(pki: Pki, port: int, grant_audit: bool = False) -> None:
    """Create the checkpoint key ids as mallory; optionally let audit use them, to look legitimate."""
    mallory = keys_stub(pki, "mallory", port)
    for key_id, algorithm in CHECKPOINT_KEYS:
        request = keys_pb2.CreateKeyRequest(key_id=key_id, purpose=keys_pb2.KEY_PURPOSE_SIGN, algorithm=algorithm)
        if grant_audit:
            for operation in keys_pb2.KeyOperation.values():
                if operation != keys_pb2.KEY_OPERATION_UNSPECIFIED:
                    ids = ["spiffe://ztmesh.local/ns/ztmesh/sa/mallory", "spiffe://ztmesh.local/ns/ztmesh/sa/audit"]
                    request.access_policy.grants.add(operation=operation, spiffe_ids=ids)
        mallory.CreateKey(request, timeout=10)


def test_the_keys_service_refuses_the_squat(pki: Pki, keys_service) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        squat(pki, keys_service.port)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("keys_service", [""], indirect=True, ids=["reservations off"])
@pytest.mark.parametrize(
    ("grant_audit", "says"),
    [(False, "audit holds no grant on it: someone else created it"),
     (True, "is owned by spiffe://ztmesh.local/ns/ztmesh/sa/mallory, not by audit")],
    ids=["hidden squat", "squat granted to audit"],
)  # fmt: skip
def test_audit_will_not_sign_with_a_key_it_does_not_own(
    pki: Pki, keys_service, tmp_path, monkeypatch, grant_audit: bool, says: str
) -> None:
    squat(pki, keys_service.port, grant_audit)  # the operator turned reservations off: the squat succeeds
    with start_audit(pki, tmp_path, monkeypatch, keys_service.port) as audit:
        outcome = wait_for(audit, pki)
    assert outcome.startswith("fatal: ZTMESH_AUDIT_SIGNING_KEY: checkpoint key 'audit-checkpoints")
    assert says in outcome
    assert isinstance(audit.fatal, FatalMisconfiguration)


def test_audit_signs_with_its_own_pinned_keys_and_refuses_a_swapped_pin(
    pki: Pki, keys_service, tmp_path, monkeypatch
) -> None:
    with start_audit(pki, tmp_path, monkeypatch, keys_service.port) as audit:
        assert wait_for(audit, pki) == "serving"
        operator = audit_pb2_grpc.AuditServiceStub(pki.channel("client", audit.port))
        batch = events(3)
        GrpcAuditSink(pki.channel("policy", audit.port)).append(batch)
        proof = operator.ProveInclusion(audit_pb2.ProveInclusionRequest(event_id=batch[1].event_id), timeout=10)
        checkpoint = operator.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=10)
    assert (proof.sequence, proof.tree_size, checkpoint.sequence) == (2, 3, 3)  # signed on demand
    assert checkpoint.note.count("\n\u2014 ") == 2  # one Ed25519 and one ML-DSA-65 signature line
    keys = keys_stub(pki, "client", keys_service.port)
    pins = {key_id: fingerprint(keys.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id=key_id), timeout=10).public_key)
            for key_id, _ in CHECKPOINT_KEYS}  # fmt: skip
    good = ",".join(f"{k}@{v}" for k, v in pins.items())
    with start_audit(pki, tmp_path, monkeypatch, keys_service.port, pins=good) as audit:
        assert wait_for(audit, pki) == "serving"
    swapped = ",".join(f"{k}@sha256:{'0' * 64}" for k in pins)
    with start_audit(pki, tmp_path, monkeypatch, keys_service.port, pins=swapped) as audit:
        outcome = wait_for(audit, pki)
    assert outcome.startswith("fatal:") and "is not the pinned sha256:000" in outcome
