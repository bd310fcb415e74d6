"""Attack: pass as a high-assurance workload at the gateway with any certificate the mesh CA signed —
one for a foreign trust domain, one without a SAN, one with a malformed SPIFFE ID, one with two URI SANs,
or a well-formed mesh identity that was never meant to call through the gateway.

Through the real Envoy on the shipped config to the real policy service and the recording upstream.
Safe outcome: only a well-formed SPIFFE ID of the mesh's trust domain on ZTMESH_GATEWAY_WORKLOADS
counts as a workload; any other certificate gets 403, reaches nothing, and its refusal is in the audit
trail with what it presented. A listed workload, and a user with a verified token and no certificate,
are judged as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.mesh import Pki, settings_for
from tests.support.policy_service import POLICY_ENV, PolicyService, running_policy_service
from tests.support.tokens import clinician
from ztmesh.mesh.errors import SettingsError
from ztmesh.policy.app import build_app

LISTED = "spiffe://ztmesh.local/ns/ztmesh/sa/client"
ENVOY = "spiffe://ztmesh.local/ns/ztmesh/sa/envoy"
TREATMENT = {"user-agent": "ehr/2.1", "x-processing-purpose": "treatment"}
ROUTES = ["/api/staff/directory", "/public/index.html", "/api/research/cohort-3"]

# name -> (URI SANs the CA puts in the certificate, a part of what the refusal names)
PRESENTED = {
    "foreign-domain": (["spiffe://evil.local/ns/ztmesh/sa/client"], "spiffe://evil.local/ns/ztmesh/sa/client"),
    "no-san": ([], "gw-no-san"),
    "dot-segment": (["spiffe://ztmesh.local/ns/ztmesh/sa/../client"], "sa/../client"),
    "trailing-slash": (["spiffe://ztmesh.local/ns/ztmesh/sa/client/"], "sa/client/"),
    "upper-case-domain": (["spiffe://ZTMESH.LOCAL/ns/ztmesh/sa/client"], "ZTMESH.LOCAL"),
    "query": (["spiffe://ztmesh.local/ns/ztmesh/sa/client?admin=1"], "admin=1"),
    "percent-encoded": (["spiffe://ztmesh.local/ns/ztmesh/sa/cli%65nt"], "cli%65nt"),
    "other-scheme": (["https://ztmesh.local/ns/ztmesh/sa/client"], "https://ztmesh.local"),
    "suffix-domain": (["spiffe://ztmesh.local.evil/ns/ztmesh/sa/client"], "ztmesh.local.evil"),
    "two-uri-sans": ([LISTED, "spiffe://evil.local/ns/ztmesh/sa/root"], "evil.local"),
    "unlisted-workload": (["spiffe://ztmesh.local/ns/ztmesh/sa/frontend"], "sa/frontend"),
    "mesh-service": (["spiffe://ztmesh.local/ns/ztmesh/sa/audit"], "sa/audit"),
}


@pytest.fixture(scope="module")
def identities(pki: Pki) -> dict[str, str]:
    """Certificate name in the PKI folder for each presented identity, all signed by the mesh CA."""
    for name, (uris, _) in PRESENTED.items():
        pki.issue_presenting(f"gw-{name}", uris)
    return {name: f"gw-{name}" for name in PRESENTED}


@pytest.fixture(scope="module")
def policy_service(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyService]:
    env = {"ZTMESH_GATEWAY_WORKLOADS": LISTED}
    with running_policy_service(pki, tmp_path_factory.mktemp("policy"), env) as service:
        yield service


def call(gateway, upstream, path, headers, identity):
    before = len(upstream.seen)
    status, response_headers, body = gateway.request("GET", path, headers, identity=identity)
    return status, response_headers, body, upstream.seen[before:]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("presented", list(PRESENTED))
def test_a_certificate_that_is_no_listed_workload_is_refused_and_audited(
    gateway, upstream, policy_service, identities, presented, route
):
    status, headers, body, reached = call(gateway, upstream, route, TREATMENT, identities[presented])
    assert status == 403, body
    assert reached == [], "a refused certificate must not reach the upstream"
    answer = json.loads(body)
    named = PRESENTED[presented][1]
    assert answer["decision"] == "DENY" and named in answer["reason"], answer["reason"]
    record = policy_service.decision_record(headers["x-ztmesh-decision-id"])
    assert record["outcome"] == "DENY" and record["caller"] == ENVOY
    assert record["details"]["reasons"] == [answer["reason"]]
    assert named in record["subject"] or named in record["details"]["reasons"][0]
    assert record["subject"], "the audit record names the principal Envoy saw"
    assert record["resource"].endswith(route) and record["details"]["classification"]


def test_the_refusal_holds_with_a_verified_token_too(gateway, upstream, idp, identities):
    # A user's token does not launder a certificate the gateway would refuse on its own.
    user = {"authorization": f"Bearer {idp.token(clinician())}", **TREATMENT}
    status, _, body, reached = call(gateway, upstream, "/api/staff/directory", user, identities["foreign-domain"])
    assert status == 403 and reached == [] and b"evil.local" in body


def test_a_listed_workload_is_judged_by_its_certificate_as_before(gateway, upstream, policy_service):
    status, _, body, reached = call(gateway, upstream, "/api/staff/directory", TREATMENT, "client")
    assert status == 200, body
    [(_, _, headers)] = reached
    # mTLS (high assurance), no device posture, hospital network: 30 + 0 + 13.5 + 20 + 10.
    assert float(headers["x-ztmesh-trust-score"]) == pytest.approx(73.5)
    assert policy_service.decision_record(headers["x-ztmesh-decision-id"])["subject"] == LISTED


def test_a_user_with_a_verified_token_and_no_certificate_is_judged_as_before(gateway, upstream, idp):
    user = {"authorization": f"Bearer {idp.token(clinician())}", **TREATMENT}
    status, _, body, reached = call(gateway, upstream, "/api/patients/42", user, None)
    assert status == 200, body
    [(_, _, headers)] = reached
    assert float(headers["x-ztmesh-trust-score"]) == pytest.approx(91.3)


@pytest.mark.parametrize(
    "entry", ["spiffe://evil.local/ns/ztmesh/sa/client", "client", "spiffe://ztmesh.local/ns/ztmesh/sa/../envoy"]
)
def test_a_list_entry_that_could_never_be_a_mesh_workload_stops_start_up(pki, tmp_path, monkeypatch, entry):
    for key, value in {**POLICY_ENV, "ZTMESH_GATEWAY_WORKLOADS": f"{LISTED},{entry}"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as refused:
        build_app(settings_for(pki, tmp_path))
    assert refused.value.setting == "ZTMESH_GATEWAY_WORKLOADS" and entry in refused.value.problem
