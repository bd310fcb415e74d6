"""HTTP through a real Envoy on the shipped gateway config (deploy/envoy/) to a real policy service over
mTLS and a recording upstream: what is allowed arrives with ztmesh's headers, what is denied or
challenged never arrives, forged headers are not believed, and a policy outage fails closed and heals
without restarting Envoy.

Who asks: end users with a bearer token that the gateway's jwt_authn filter verifies (keys of a
throwaway identity provider replace the shipped placeholder), workloads with their mesh certificate.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.gateway import Gateway, wait_for
from tests.support.tokens import TokenIssuer, clinician
from tests.support.upstream import Upstream

# The gateway's answer when the policy service cannot answer (ext_authz `status_on_error`).
FAIL_CLOSED_STATUS = 503
UA = {"user-agent": "ehr/2.1"}
TREATMENT = {**UA, "x-processing-purpose": "treatment"}
WORKLOAD = "spiffe://ztmesh.local/ns/ztmesh/sa/client"


def call(
    gateway: Gateway,
    upstream: Upstream,
    path: str,
    headers: dict[str, str],
    *,
    method: str = "GET",
    identity: str | None = None,
) -> tuple[int, dict[str, str], bytes, list[tuple[str, str, dict[str, str]]]]:
    """One request through the gateway: status, response headers, body, and what reached the upstream."""
    before = len(upstream.seen)
    status, response_headers, body = gateway.request(method, path, headers, identity=identity)
    return status, response_headers, body, upstream.seen[before:]


def bearer(idp: TokenIssuer, **claims: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {idp.token(clinician(**claims))}"}


def test_allowed_request_reaches_the_upstream_with_the_decision(gateway, upstream, idp):
    status, _, body, reached = call(gateway, upstream, "/api/patients/42?tab=notes", {**bearer(idp), **TREATMENT})
    assert status == 200, body
    assert json.loads(body) == {"ok": True, "path": "/api/patients/42?tab=notes"}
    [(method, path, headers)] = reached
    assert (method, path) == ("GET", "/api/patients/42?tab=notes")
    assert len(headers["x-ztmesh-decision-id"]) == 36  # a UUIDv7 from the policy service
    # AAL2 password+OTP, compliant managed laptop, hospital network, on call, for treatment.
    assert float(headers["x-ztmesh-trust-score"]) == pytest.approx(91.3)
    assert headers["x-ztmesh-obligations"] == "encrypt_transmission,log_all_access"
    assert "authorization" not in headers, "the bearer token stays at the gateway"


def test_workload_is_judged_by_its_mesh_certificate(gateway, upstream):
    status, _, body, reached = call(gateway, upstream, "/api/staff/directory", TREATMENT, identity="client")
    assert status == 200, body
    [(_, _, headers)] = reached
    # mTLS (high assurance), no device posture, hospital network: 30 + 0 + 13.5 + 20 + 10.
    assert float(headers["x-ztmesh-trust-score"]) == pytest.approx(73.5)


@pytest.mark.parametrize(
    ("path", "headers", "identity", "reason"),
    [
        ("/api/patients/42", TREATMENT | {"x-processing-purpose": "marketing"}, "token",
         "the data subject has not consented to processing for marketing"),
        ("/api/billing/invoices/7", TREATMENT, "client", "trust score 73.5 is below the minimum 85 for financial_data"),
        ("/api/staff/directory", TREATMENT, None, "subject.id"),  # neither a token nor a certificate
    ],
    ids=["no-consent", "trust-below-minimum", "anonymous"],
)  # fmt: skip
def test_denied_request_gets_403_json_and_never_reaches_the_upstream(
    gateway, upstream, idp, path, headers, identity, reason
):
    if identity == "token":
        headers, identity = {**bearer(idp), **headers}, None
    status, response_headers, body, reached = call(gateway, upstream, path, headers, identity=identity)
    assert status == 403
    assert reached == [], "a denied request must not reach the upstream"
    assert response_headers["content-type"] == "application/json" and len(body) < 512
    answer = json.loads(body)
    assert answer["decision"] == "DENY" and reason in answer["reason"]
    assert answer["decision_id"] and response_headers["x-ztmesh-decision-id"] == answer["decision_id"]


def test_challenge_gets_401_naming_the_step_up(gateway, upstream, idp):
    # Password only (AAL1): trust ~80, inside critical patient data's step-up band (75 <= score < 85).
    weak = bearer(idp, acr="aal1", amr=["pwd"])
    status, headers, body, reached = call(gateway, upstream, "/api/icu/beds/3", {**weak, **TREATMENT})
    assert status == 401
    assert reached == []
    assert headers["x-ztmesh-step-up"] == "mfa,supervisor_approval"
    assert headers["www-authenticate"] == 'ztmesh-step-up methods="mfa,supervisor_approval"'
    answer = json.loads(body)
    assert answer["decision"] == "CHALLENGE" and answer["step_up"] == ["mfa", "supervisor_approval"]
    assert "step-up required" in answer["reason"] and answer["decision_id"]
    # After the step-up (OTP, AAL2) the same person on the same route is let through.
    status, _, _, reached = call(gateway, upstream, "/api/icu/beds/3", {**bearer(idp), **TREATMENT})
    assert status == 200 and [p for _, p, _ in reached] == ["/api/icu/beds/3"]


def test_a_token_the_gateway_cannot_verify_is_refused_before_the_policy(gateway, upstream):
    impostor = TokenIssuer()  # same issuer, audience and key id; another key
    forged = {"authorization": f"Bearer {impostor.token(clinician())}", **TREATMENT}
    checks_before = gateway.stat("http.gateway.ext_authz.ok") + gateway.stat("http.gateway.ext_authz.denied")
    status, _, body, reached = call(gateway, upstream, "/api/patients/42", forged)
    assert status == 401 and b"Jwt verification fails" in body
    assert reached == []
    checks_after = gateway.stat("http.gateway.ext_authz.ok") + gateway.stat("http.gateway.ext_authz.denied")
    assert checks_after == checks_before, "jwt_authn refuses it before ext_authz runs"


FORGED = {
    "x-ztmesh-decision-id": "forged-decision",
    "x-ztmesh-trust-score": "100.0",
    "x-ztmesh-obligations": "none",
    "x-ztmesh-subject": "dr.ana",
    "x-ztmesh-roles": "physician,on_call",
    "x-ztmesh-decision": "ALLOW",
    "x-forwarded-client-cert": "By=spiffe://ztmesh.local/ns/ztmesh/sa/envoy;URI=spiffe://ztmesh.local/ns/ztmesh/sa/policy",
}


def test_forged_ztmesh_headers_never_reach_the_upstream(gateway, upstream, idp):
    status, _, _, reached = call(gateway, upstream, "/api/patients/42", {**bearer(idp), **TREATMENT, **FORGED})
    assert status == 200
    [(_, _, headers)] = reached
    assert headers["x-ztmesh-decision-id"] not in ("forged-decision",) and "," not in headers["x-ztmesh-decision-id"]
    assert headers["x-ztmesh-trust-score"] == "91.3"
    assert headers["x-ztmesh-obligations"] == "encrypt_transmission,log_all_access"
    for name in ("x-ztmesh-subject", "x-ztmesh-roles", "x-ztmesh-decision"):
        assert name not in headers, name
    assert WORKLOAD not in headers.get("x-forwarded-client-cert", "")
    assert "sa/policy" not in headers.get("x-forwarded-client-cert", "")


@pytest.mark.parametrize("identity", ["client", None], ids=["workload", "anonymous"])
def test_forged_identity_does_not_change_the_decision(gateway, upstream, identity):
    honest = call(gateway, upstream, "/api/billing/invoices/7", TREATMENT, identity=identity)
    forged = call(gateway, upstream, "/api/billing/invoices/7", {**TREATMENT, **FORGED}, identity=identity)
    for status, _, _, reached in (honest, forged):
        assert status == 403 and reached == []
    assert json.loads(forged[2])["reason"] == json.loads(honest[2])["reason"]


def test_policy_outage_fails_closed_and_heals_without_restarting_envoy(gateway, upstream, idp, policy_service):
    request = {**bearer(idp), **TREATMENT}
    assert call(gateway, upstream, "/api/patients/42", request)[0] == 200
    envoy_pid = gateway.process.pid
    errors_before = gateway.stat("http.gateway.ext_authz.error")
    policy_service.stop()
    try:
        for path in ("/api/patients/42", "/public/index.html", "/api/staff/directory"):
            status, _, _, reached = call(gateway, upstream, path, request)
            assert status == FAIL_CLOSED_STATUS, path
            assert reached == [], f"{path} reached the upstream while the policy service was down"
        assert gateway.stat("http.gateway.ext_authz.error") >= errors_before + 3
    finally:
        policy_service.start()  # same port
    wait_for(
        lambda: call(gateway, upstream, "/api/patients/42", request)[0] == 200,
        "traffic to flow again through the same Envoy",
    )
    status, _, _, reached = call(gateway, upstream, "/api/patients/42", request)
    assert status == 200 and len(reached) == 1 and reached[0][2]["x-ztmesh-decision-id"]
    assert gateway.process.poll() is None and gateway.process.pid == envoy_pid, "Envoy was not restarted"
