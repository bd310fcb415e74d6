"""ext_authz mapping: CheckRequest -> DecideRequest, and decision -> CheckResponse (table-driven)."""

from __future__ import annotations

import json

import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.protobuf import struct_pb2

from ztmesh.policy.errors import InvalidRequest
from ztmesh.policy.extauthz import check_to_request, decision_to_check
from ztmesh.policy.model import Assurance, Decision, Outcome, RegistrationStatus


def check_request(method="GET", path="/api/patients/42?x=1", principal="", headers=None, labels=None, claims=None):
    attributes = attribute_context_pb2.AttributeContext()
    attributes.source.principal = principal
    attributes.source.address.socket_address.address = "10.1.2.3"
    http = attributes.request.http
    http.method, http.path, http.host, http.id = method, path, "gw.hospital", "req-1"
    http.headers.update(headers or {})
    attributes.context_extensions.update(
        labels or {"classification": "patient_data", "resource_type": "patient_record"}
    )
    if claims is not None:
        payload = struct_pb2.Struct()
        payload.update({"jwt_payload": claims})
        attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].CopyFrom(payload)
    return external_auth_pb2.CheckRequest(attributes=attributes)


@pytest.mark.parametrize(
    ("method", "labels", "action"),
    [
        ("GET", {}, "read"),
        ("HEAD", {}, "read"),
        ("POST", {}, "create"),
        ("PUT", {}, "write"),
        ("PATCH", {}, "write"),
        ("DELETE", {}, "delete"),
        ("POST", {"action": "prescribe"}, "prescribe"),
    ],
)
def test_method_maps_to_action_unless_the_route_names_one(method, labels, action):
    decide = check_to_request(check_request(method=method, labels={"classification": "internal", **labels}))
    assert decide.action == action


@pytest.mark.parametrize("query", ["_method=DELETE", "a=1&%5Fmethod=PUT", "_Method=x", "_method[]=x", "a=1;_method=x"])
def test_a_query_that_names_the_method_is_refused(query):
    with pytest.raises(InvalidRequest, match="method overrides are refused"):
        check_to_request(check_request(method="POST", path=f"/api/patients/42?{query}"))


@pytest.mark.parametrize("query", ["", "sort=_method", "method=x", "_methods=x", "x_method=y"])
def test_a_query_that_does_not_name_the_method_is_judged(query):
    assert check_to_request(check_request(path=f"/api/patients/42?{query}")).action == "read"


def test_route_labels_and_request_context():
    decide = check_to_request(check_request(headers={"user-agent": "curl", "x-processing-purpose": "treatment"}))
    assert (decide.resource.classification, decide.resource.type, decide.resource.id) == (
        "patient_data",
        "patient_record",
        "/api/patients/42",
    )
    assert (decide.context.source_ip, decide.context.user_agent, decide.context.purpose, decide.context.request_id) == (
        "10.1.2.3",
        "curl",
        "treatment",
        "req-1",
    )


def test_subject_from_verified_jwt_claims_wins_over_the_peer():
    claims = {
        "sub": "dr.ana",
        "roles": ["physician"],
        "acr": "aal2",
        "amr": ["pwd", "otp"],
        "registration": {"council": "CRM", "region": "SP", "number": "123456", "status": "active"},
        "device": {"id": "laptop-7", "managed": True, "compliant": True, "patch_age_days": 3},
    }
    decide = check_to_request(check_request(principal="spiffe://ztmesh.local/ns/ztmesh/sa/envoy", claims=claims))
    assert decide.subject.id == "dr.ana" and list(decide.subject.roles) == ["physician"]
    assert decide.subject.assurance == Assurance.MEDIUM and decide.subject.auth_method == "pwd,otp"
    assert decide.subject.registration.status == RegistrationStatus.ACTIVE
    assert decide.device.id == "laptop-7" and decide.device.compliant and decide.device.patch_age_days == 3


def test_subject_from_the_mtls_peer_without_a_token():
    decide = check_to_request(check_request(principal="spiffe://ztmesh.local/ns/clinic/sa/frontend"))
    assert decide.subject.id == "spiffe://ztmesh.local/ns/clinic/sa/frontend"
    assert decide.subject.auth_method == "mtls"


def test_a_device_claim_of_the_wrong_type_is_an_invalid_request_naming_it():
    claims = {"sub": "dr.ana", "device": {"id": "laptop-7", "managed": "yes"}}
    with pytest.raises(InvalidRequest, match="device.managed"):
        check_to_request(check_request(claims=claims))


def test_an_unverified_bearer_header_is_not_an_identity():
    forged = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."
    decide = check_to_request(check_request(headers={"authorization": forged}))
    assert decide.subject.id == ""


def decision(outcome, reasons=(), **kwargs):
    return Decision(outcome, 81.25, (), tuple(reasons), decision_id="d-1", **kwargs)


def test_allow_adds_decision_headers_and_strips_forged_ones():
    reply = decision_to_check(
        decision(Outcome.ALLOW, obligations=("log_all_access",)),
        {"x-ztmesh-decision-id": "forged", "X-Ztmesh-Trust-Score": "100", "accept": "*/*"},
    )
    assert reply.status.code == 0
    added = {h.header.key: h.header.value for h in reply.ok_response.headers}
    assert added == {
        "x-ztmesh-decision-id": "d-1",
        "x-ztmesh-trust-score": "81.2",
        "x-ztmesh-obligations": "log_all_access",
    }
    assert sorted(reply.ok_response.headers_to_remove) == ["X-Ztmesh-Trust-Score", "x-ztmesh-decision-id"]


def test_deny_is_a_403_with_a_json_reason():
    reply = decision_to_check(decision(Outcome.DENY, reasons=["trust 60 below 75"]), {})
    assert reply.denied_response.status.code == 403 and reply.status.code == 7
    assert json.loads(reply.denied_response.body) == {
        "decision": "DENY",
        "decision_id": "d-1",
        "reason": "trust 60 below 75",
    }


def test_challenge_is_a_401_naming_the_step_up():
    reply = decision_to_check(decision(Outcome.CHALLENGE, step_up=("mfa", "supervisor_approval")), {})
    assert reply.denied_response.status.code == 401
    headers = {h.header.key: h.header.value for h in reply.denied_response.headers}
    assert headers["x-ztmesh-step-up"] == "mfa,supervisor_approval"
    assert json.loads(reply.denied_response.body)["step_up"] == ["mfa", "supervisor_approval"]
