"""Attack: lowering someone else's trust with ReportSignal. Only the operators and the configured
reporters may report; the recorded source is the caller's SPIFFE ID whatever the request says; each
reporter is rate limited; refusals are audited. Through a real policy and audit service over mTLS."""

from __future__ import annotations

import grpc
import pytest

from tests.support.audited_policy import AuditedPolicy, audited_policy, details
from tests.support.mesh import Pki
from ztmesh._proto.policy.v1 import policy_pb2, policy_pb2_grpc

SIEM = "spiffe://ztmesh.local/ns/ztmesh/sa/siem"
ROGUE = "spiffe://ztmesh.local/ns/ztmesh/sa/rogue"
ENVOY = "spiffe://ztmesh.local/ns/ztmesh/sa/envoy"


def _identity(pki: Pki, name: str) -> str:
    if not (pki.directory / f"{name}.crt").exists():
        pki.issue(name)  # the mesh CA's own certificate: a compromised workload, not a forgery
    return name


def stub(mesh: AuditedPolicy, identity: str) -> policy_pb2_grpc.PolicyServiceStub:
    return policy_pb2_grpc.PolicyServiceStub(mesh.pki.channel(_identity(mesh.pki, identity), mesh.policy.port))


def physician() -> policy_pb2.DecideRequest:
    return policy_pb2.DecideRequest(
        subject=policy_pb2.Subject(
            id="dr.ana", roles=["physician", "on_call"], auth_method="pwd,otp",
            assurance=policy_pb2.ASSURANCE_LEVEL_MEDIUM,
            registration=policy_pb2.ProfessionalRegistration(
                council="CRM", region="SP", number="123456", status=policy_pb2.REGISTRATION_STATUS_ACTIVE),
        ),
        device=policy_pb2.Device(id="laptop-7", managed=True, compliant=True, os="linux", patch_age_days=3,
                                 disk_encrypted=True, endpoint_protection=True),
        resource=policy_pb2.Resource(type="patient_record", id="p-42", classification="patient_data",
                                     consented_purposes=["treatment"]),
        action="read",
        context=policy_pb2.RequestContext(source_ip="10.1.2.3", user_agent="ehr/2.1", purpose="treatment"),
    )  # fmt: skip


@pytest.fixture
def mesh(pki, tmp_path):
    env = {"ZTMESH_SIGNAL_REPORTERS": SIEM, "ZTMESH_SIGNAL_BURST": "3", "ZTMESH_SIGNAL_RATE": "0.001"}
    with audited_policy(pki, tmp_path, env) as running:
        yield running


@pytest.mark.parametrize("subject", ["dr.ana", ENVOY])
@pytest.mark.parametrize("attacker", ["rogue", "envoy"])
def test_a_workload_that_is_no_reporter_cannot_lower_trust(mesh, attacker, subject):
    before = stub(mesh, "client").Decide(physician(), timeout=10)
    assert before.decision == policy_pb2.DECISION_ALLOW
    signal = policy_pb2.ReportSignalRequest(subject_id=subject, kind="malware_detected", source="siem")
    with pytest.raises(grpc.RpcError) as refused:
        stub(mesh, attacker).ReportSignal(signal, timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "is not a signal reporter (ZTMESH_SIGNAL_REPORTERS" in refused.value.details()
    after = stub(mesh, "client").Decide(physician(), timeout=10)
    assert after.decision == policy_pb2.DECISION_ALLOW and after.trust_score == before.trust_score
    (record,) = mesh.wait_for_records(1, service="policy", action="policy.signal", outcome="REFUSED")
    caller = f"spiffe://ztmesh.local/ns/ztmesh/sa/{attacker}"
    assert record.event.caller_spiffe_id == caller and record.event.subject == subject
    assert details(record)["annotation"] == "siem" and "not a signal reporter" in details(record)["error"]


def test_the_recorded_source_is_the_caller_not_the_request(mesh):
    signal = policy_pb2.ReportSignalRequest(
        subject_id="dr.ana", kind="anomaly", source="spiffe://ztmesh.local/ns/ztmesh/sa/edr"
    )
    assert stub(mesh, "siem").ReportSignal(signal, timeout=10).behaviour_score == pytest.approx(0.7)
    (record,) = mesh.wait_for_records(1, service="policy", action="policy.signal", outcome="OK")
    assert record.event.caller_spiffe_id == SIEM and details(record)["source"] == SIEM
    assert details(record)["annotation"] == "spiffe://ztmesh.local/ns/ztmesh/sa/edr"  # kept, as free text only


def test_each_reporter_is_rate_limited_on_its_own(mesh):
    signal = policy_pb2.ReportSignalRequest(subject_id="dr.ana", kind="failed_login", severity=0.1)
    siem = stub(mesh, "siem")
    for _ in range(3):  # the burst
        siem.ReportSignal(signal, timeout=10)
    with pytest.raises(grpc.RpcError) as limited:
        siem.ReportSignal(signal, timeout=10)
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "ZTMESH_SIGNAL_BURST" in limited.value.details()
    stub(mesh, "client").ReportSignal(signal, timeout=10)  # the operator has a bucket of its own
