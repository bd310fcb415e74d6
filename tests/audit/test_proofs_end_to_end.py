"""Proofs from the running mesh: a decision's inclusion proof from the policy service, checked by Go's
sumdb/note + sumdb/tlog + transparency-dev/merkle (tests/audit/tlogverify); and the
`ztmesh audit checkpoint | prove | consistency | verify --checkpoint` commands against the service."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests.audit.test_transparency_interop import run as run_go
from tests.audit.test_transparency_interop import tlogverify  # noqa: F401 - the fixture
from tests.support.service_mesh import ServiceMesh, service_mesh
from ztmesh._proto.audit.v1 import audit_pb2
from ztmesh._proto.policy.v1 import policy_pb2
from ztmesh.audit import merkle, note, proofs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mesh(pki, tmp_path_factory: pytest.TempPathFactory):
    with service_mesh(pki, tmp_path_factory.mktemp("mesh")) as running_mesh:
        yield running_mesh


def decide(mesh: ServiceMesh, identity: str = "client") -> str:
    request = policy_pb2.DecideRequest(
        subject=policy_pb2.Subject(id="dr.ana", roles=["physician"]),
        resource=policy_pb2.Resource(type="patient_record", classification="patient_data", id="p-42"),
        action="read",
    )
    reply = mesh.stub("policy", identity).Decide(request, timeout=10)
    mesh.wait_for_records(decision_id=reply.decision_id)
    return reply.decision_id


def verifier_key(mesh: ServiceMesh) -> str:
    data_dir = Path(mesh.servers["audit"].settings.data_dir)
    return (data_dir / "audit" / "checkpoint-note.vkey").read_text().strip()


def test_a_decision_s_proof_from_the_policy_service_is_accepted_by_go(mesh: ServiceMesh, tlogverify) -> None:  # noqa: F811
    decision_id = decide(mesh)
    for _ in range(5):
        decide(mesh)
    proof = mesh.stub("policy").ProveDecision(policy_pb2.ProveDecisionRequest(decision_id=decision_id), timeout=10)
    record = json.loads(proof.record)
    assert record["decision_id"] == decision_id and record["caller"] == "spiffe://ztmesh.local/ns/ztmesh/sa/client"
    document = {
        "verifier_key": verifier_key(mesh),
        "checkpoint": proof.checkpoint,
        "inclusions": [
            {
                "index": proof.sequence - 1,
                "leaf_hash": base64.b64encode(merkle.leaf_hash(proof.record)).decode(),
                "proof": [base64.b64encode(h).decode() for h in proof.proof],
            }
        ],  # fmt: skip
        "consistency": [],
    }
    results = run_go(tlogverify, document)
    assert all(ok for ok, _ in results.values()), results
    assert len(results) == 3  # the note, and the inclusion by both Go implementations


def test_someone_else_s_decision_is_not_found_like_an_unknown_one(mesh: ServiceMesh) -> None:
    decision_id = decide(mesh, "client")
    other = mesh.stub("policy", "envoy")
    with pytest.raises(grpc.RpcError) as foreign:
        other.ProveDecision(policy_pb2.ProveDecisionRequest(decision_id=decision_id), timeout=10)
    with pytest.raises(grpc.RpcError) as unknown:
        other.ProveDecision(policy_pb2.ProveDecisionRequest(decision_id="0190aaaa-0000-7000-8000-000000000000"),
                            timeout=10)  # fmt: skip
    assert foreign.value.code() == unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert foreign.value.details().replace(decision_id, "X") == unknown.value.details().replace(
        "0190aaaa-0000-7000-8000-000000000000", "X"
    )


def cli(mesh: ServiceMesh, pki, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ZTMESH_CERT_DIR": str(pki.directory),
           "ZTMESH_AUDIT_ADDR": f"localhost:{mesh.servers['audit'].port}"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "ztmesh.cli", "audit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_the_audit_proof_commands(mesh: ServiceMesh, pki, tmp_path: Path) -> None:
    decision_id = decide(mesh)
    vkey = verifier_key(mesh)
    proved = cli(mesh, pki, "prove", "--decision", decision_id, "--verifier-key", vkey)
    assert proved.returncode == 0, proved.stderr
    document = json.loads(proved.stdout)
    assert document["type"] == proofs.INCLUSION_TYPE and "verified: record" in proved.stderr
    head = proofs.InclusionProof.from_json(document).verify([note.parse_vkey(vkey)])
    assert head.size == document["tree_size"] >= document["sequence"]

    held = cli(mesh, pki, "checkpoint")
    assert held.returncode == 0 and held.stdout.startswith("ztmesh.local/audit\n")
    (tmp_path / "held.note").write_text(held.stdout)
    for _ in range(3):
        decide(mesh)
    newer = mesh.stub("audit").ProveInclusion(audit_pb2.ProveInclusionRequest(decision_id=decide(mesh)), timeout=10)
    consistency = cli(mesh, pki, "consistency", str(head.size), str(newer.tree_size))
    assert consistency.returncode == 0, consistency.stderr
    assert proofs.ConsistencyProof.from_json(json.loads(consistency.stdout)).holds()

    verified = cli(mesh, pki, "verify", "--checkpoint", str(tmp_path / "held.note"))
    assert verified.returncode == 0 and "chain intact" in verified.stdout, verified.stderr + verified.stdout
    forged = held.stdout.replace(held.stdout.split("\n")[2], base64.b64encode(bytes(32)).decode())
    (tmp_path / "forged.note").write_text(forged)
    refused = cli(mesh, pki, "verify", "--checkpoint", str(tmp_path / "forged.note"))
    assert refused.returncode == 2 and "does not verify" in refused.stderr
