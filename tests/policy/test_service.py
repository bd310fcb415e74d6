"""PolicyService (and ext_authz Check on the same port) over real mTLS: RPCs, status codes, the
operator-only reload, and start-up refusing a bad bundle with the setting's name."""

from __future__ import annotations

import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from tests.policy.conftest import serve_policy_from
from tests.support.mesh import settings_for
from ztmesh._proto.policy.v1 import policy_pb2, policy_pb2_grpc
from ztmesh.mesh.errors import SettingsError
from ztmesh.policy.app import build_app


def stub(pki, server, identity="client") -> policy_pb2_grpc.PolicyServiceStub:
    return policy_pb2_grpc.PolicyServiceStub(pki.channel(identity, server.port))


def physician(**changes) -> policy_pb2.DecideRequest:
    request = policy_pb2.DecideRequest(
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
        context=policy_pb2.RequestContext(source_ip="10.1.2.3", user_agent="ehr/2.1", purpose="treatment",
                                          request_id="req-9"),
    )  # fmt: skip
    for key, value in changes.items():
        setattr(request, key, value)
    return request


def test_decide_over_mtls(pki, policy_server):
    reply = stub(pki, policy_server).Decide(physician(), timeout=10)
    assert reply.decision == policy_pb2.DECISION_ALLOW, reply.reasons
    assert list(reply.obligations) == ["encrypt_transmission", "log_all_access"]
    assert [f.name for f in reply.factors] == ["identity", "device", "network", "behaviour", "context"]
    assert reply.trust_score == pytest.approx(sum(f.contribution for f in reply.factors), abs=0.02)
    assert reply.decision_id and reply.policy_revision and reply.request_id == "req-9"
    assert reply.fault == policy_pb2.FAULT_UNSPECIFIED


def test_unknown_patch_age_is_not_patched_today(pki, policy_server):
    client = stub(pki, policy_server)
    known = client.Decide(physician(), timeout=10)
    request = physician()
    request.device.ClearField("patch_age_days")
    unknown = client.Decide(request, timeout=10)
    device = {f.name: f for f in unknown.factors}["device"]
    assert (
        device.score < {f.name: f for f in known.factors}["device"].score and "patch age unknown" in device.explanation
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.resource.ClearField("classification"), "resource.classification: is required"),
        (lambda r: setattr(r.resource, "classification", "top_secret"), "unknown classification 'top_secret'"),
        (lambda r: setattr(r.subject, "assurance", 42), "subject.assurance: unknown enum value 42"),
        (lambda r: setattr(r.context, "source_ip", "not-an-ip"), "context.source_ip"),
        (lambda r: setattr(r, "action", "x" * 100), "action: is 100 characters long"),
    ],
)
def test_bad_request_is_invalid_argument(pki, policy_server, change, message):
    request = physician()
    change(request)
    with pytest.raises(grpc.RpcError) as info:
        stub(pki, policy_server).Decide(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    trailers = dict(info.value.trailing_metadata())
    assert len(trailers["x-ztmesh-decision-id"]) == 36  # the refusal is audited under this id


def test_decide_batch(pki, policy_server):
    client = stub(pki, policy_server)
    bad = physician(action="")
    replies = client.DecideBatch(policy_pb2.DecideBatchRequest(requests=[physician(), bad]), timeout=10).responses
    assert [r.decision for r in replies] == [policy_pb2.DECISION_ALLOW, policy_pb2.DECISION_DENY]
    assert replies[1].fault == policy_pb2.FAULT_INVALID_REQUEST and "action: is required" in replies[1].reasons[0]
    with pytest.raises(grpc.RpcError) as info:
        client.DecideBatch(policy_pb2.DecideBatchRequest(requests=[physician()] * 101), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_report_signal_moves_the_score(pki, policy_server):
    client = stub(pki, policy_server)
    before = client.Decide(physician(), timeout=10).trust_score
    reply = client.ReportSignal(policy_pb2.ReportSignalRequest(subject_id="dr.ana", kind="anomaly"), timeout=10)
    assert reply.behaviour_score == pytest.approx(0.7)
    assert client.Decide(physician(), timeout=10).trust_score == pytest.approx(before - 6)
    with pytest.raises(grpc.RpcError) as info:
        client.ReportSignal(policy_pb2.ReportSignalRequest(subject_id="dr.ana", kind="sneeze"), timeout=10)
    assert (
        info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown signal kind 'sneeze'" in info.value.details()
    )


def test_policy_info_and_reload(pki, policy_server, policy_dir):
    client = stub(pki, policy_server)
    info = client.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=10)
    assert info.engine == "opa-embedded" and list(info.packages) == ["ztmesh.authz"] and info.trust_revision
    assert client.ReloadPolicy(policy_pb2.ReloadPolicyRequest(), timeout=10).changed is False
    (policy_dir / "authz.rego").write_text((policy_dir / "authz.rego").read_text().replace("if {", "if {{", 1))
    with pytest.raises(grpc.RpcError) as info_error:
        client.ReloadPolicy(policy_pb2.ReloadPolicyRequest(), timeout=10)
    assert info_error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "bundle refused, the old one keeps serving: authz.rego:" in info_error.value.details()
    assert client.Decide(physician(), timeout=10).policy_revision == info.revision
    assert client.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=10).last_error.startswith("authz.rego:")


def test_reload_is_for_operators_only(pki, policy_server):
    with pytest.raises(grpc.RpcError) as info:
        stub(pki, policy_server, identity="plugins").ReloadPolicy(policy_pb2.ReloadPolicyRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_ext_authz_check_on_the_same_port(pki, tmp_path, policy_dir, monkeypatch):
    from tests.support.mesh import running

    serve_policy_from(monkeypatch, policy_dir)
    # The frontend is a workload the gateway lets through with its certificate.
    monkeypatch.setenv("ZTMESH_GATEWAY_WORKLOADS", "spiffe://ztmesh.local/ns/clinic/sa/frontend")
    settings = settings_for(pki, tmp_path)
    attributes = attribute_context_pb2.AttributeContext()
    attributes.source.principal = "spiffe://ztmesh.local/ns/clinic/sa/frontend"
    attributes.source.address.socket_address.address = "10.1.2.3"
    attributes.request.http.method, attributes.request.http.path = "GET", "/api/beds"
    attributes.request.http.headers.update({"user-agent": "curl", "x-ztmesh-trust-score": "100"})
    attributes.context_extensions.update({"classification": "internal", "resource_type": "bed_board"})
    with running(build_app(settings), settings) as policy_server:
        check = external_auth_pb2_grpc.AuthorizationStub(pki.channel("envoy", policy_server.port))
        reply = check.Check(external_auth_pb2.CheckRequest(attributes=attributes), timeout=10)
    headers = {h.header.key: h.header.value for h in reply.ok_response.headers}
    assert reply.status.code == 0 and headers["x-ztmesh-decision-id"]
    assert list(reply.ok_response.headers_to_remove) == ["x-ztmesh-trust-score"]


def test_a_bad_bundle_stops_start_up_naming_the_setting(pki, tmp_path, policy_dir, monkeypatch):
    (policy_dir / "authz.rego").write_text("package ztmesh.authz\n\ndecision := {\n")
    serve_policy_from(monkeypatch, policy_dir)
    with pytest.raises(SettingsError, match=r"ZTMESH_POLICY_DIR: policy bundle refused: authz.rego:\d+"):
        build_app(settings_for(pki, tmp_path))


def test_decisions_land_in_the_audit_trail(pki, tmp_path, policy_dir, monkeypatch) -> None:
    """The policy service's durable emitter ships every decision, sanitized, to a real audit service."""
    from tests.support.mesh import running
    from ztmesh._proto.audit.v1 import audit_pb2, audit_pb2_grpc
    from ztmesh.audit.app import build_app as build_audit_app

    serve_policy_from(monkeypatch, policy_dir)
    audit_settings = settings_for(pki, tmp_path / "audit")
    with running(build_audit_app(audit_settings), audit_settings) as audit_server:
        settings = settings_for(pki, tmp_path / "policy", audit_addr=f"localhost:{audit_server.port}")
        with running(build_app(settings), settings) as server:
            allowed = stub(pki, server).Decide(physician(), timeout=10)
            unconsented = physician()
            del unconsented.resource.consented_purposes[:]  # treatment without the patient's consent
            denied = stub(pki, server).Decide(unconsented, timeout=10)
        audit = audit_pb2_grpc.AuditServiceStub(pki.channel("client", audit_server.port))
        records = [
            record
            for page in audit.Query(audit_pb2.QueryRequest(service="policy", action="decide"), timeout=10)
            for record in page.records
        ]
    by_decision = {record.event.decision_id: record for record in records}
    assert set(by_decision) == {allowed.decision_id, denied.decision_id}
    record = by_decision[allowed.decision_id]
    assert record.event.outcome == "ALLOW" and record.event.subject == "dr.ana"
    assert record.event.caller_spiffe_id == "spiffe://ztmesh.local/ns/ztmesh/sa/client"
    assert by_decision[denied.decision_id].event.outcome == "DENY"
