"""Attack: have a request judged as one method and executed as another, by sending a method-override
header (`X-HTTP-Method-Override`, `X-Method-Override`, `X-HTTP-Method`) that some upstream frameworks
honour: a GET judged `read` would then run as a DELETE.

Through the real Envoy on the shipped config to the real policy service and the recording upstream.
Safe outcome: the request is judged and forwarded with the method it was sent with, and no override
header, in any letter case, reaches the upstream.
"""

from __future__ import annotations

import pytest

from tests.support.tokens import TokenIssuer, clinician

OVERRIDES = ("x-http-method-override", "x-method-override", "x-http-method")
TREATMENT = {"user-agent": "ehr/2.1", "x-processing-purpose": "treatment"}

# name -> the override headers sent with the request
SENT = {
    "x-http-method-override": {"X-HTTP-Method-Override": "DELETE"},
    "x-method-override": {"X-Method-Override": "DELETE"},
    "x-http-method": {"X-HTTP-Method": "DELETE"},
    "mixed-case": {"x-Http-Method-OVERRIDE": "DELETE"},
    "all-three": {"X-HTTP-Method-Override": "DELETE", "X-Method-Override": "PUT", "X-HTTP-Method": "PATCH"},
}


@pytest.fixture(scope="module")
def user(idp: TokenIssuer) -> dict[str, str]:
    return {"authorization": f"Bearer {idp.token(clinician())}", **TREATMENT}


@pytest.mark.parametrize("sent", list(SENT))
def test_an_override_header_never_reaches_the_upstream(gateway, upstream, policy_service, user, sent):
    before = len(upstream.seen)
    status, _, body = gateway.request("GET", "/api/patients/42", {**user, **SENT[sent]}, identity=None)
    assert status == 200, body
    [(method, path, headers)] = upstream.seen[before:]
    assert (method, path) == ("GET", "/api/patients/42")
    assert not [name for name in headers if name in OVERRIDES], headers
    record = policy_service.decision_record(headers["x-ztmesh-decision-id"])
    assert record["details"]["action"] == "read", record


def test_the_method_sent_is_the_one_judged(gateway, upstream, policy_service, user):
    # The override matters: the same user's real DELETE is judged as `delete`, not `read`.
    before = len(upstream.seen)
    _, response_headers, _ = gateway.request("DELETE", "/api/patients/42", user, identity=None)
    reached = upstream.seen[before:]
    decision_id = reached[0][2]["x-ztmesh-decision-id"] if reached else response_headers["x-ztmesh-decision-id"]
    assert policy_service.decision_record(decision_id)["details"]["action"] == "delete"
