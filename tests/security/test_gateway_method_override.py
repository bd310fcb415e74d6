"""Attack: have a request judged as one method and executed as another, by sending a method-override
header (`X-HTTP-Method-Override`, `X-Method-Override`, `X-HTTP-Method`) or query parameter
(`?_method=DELETE`) that some upstream frameworks honour: a GET judged `read` would then run as a DELETE.

Through the real Envoy on the shipped config to the real policy service and the recording upstream.
Safe outcome: the request is judged and forwarded with the method it was sent with, and no override
header, in any letter case, reaches the upstream; a query that names a method, however it is spelled,
is refused (an audited DENY) and nothing reaches the upstream.
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


# name -> a query string that names the method as some framework would read it
QUERIES = {
    "plain": "_method=DELETE",
    "after-another": "page=2&_method=PUT",
    "percent-encoded-underscore": "%5Fmethod=DELETE",
    "percent-encoded-letter": "_%6Dethod=DELETE",
    "upper-case": "_METHOD=delete",
    "array-suffix": "_method[]=DELETE",
    "semicolon-separated": "page=2;_method=DELETE",
}


@pytest.mark.parametrize("query", list(QUERIES))
def test_a_query_naming_the_method_is_refused(gateway, upstream, policy_service, user, query):
    before = len(upstream.seen)
    status, headers, body = gateway.request("GET", f"/api/patients/42?{QUERIES[query]}", user, identity=None)
    assert status == 403, body
    assert upstream.seen[before:] == []
    record = policy_service.decision_record(headers["x-ztmesh-decision-id"])
    assert record["outcome"] == "DENY" and "method overrides are refused" in record["details"]["reasons"][0], record


def test_a_query_mentioning_method_as_a_value_is_judged_as_usual(gateway, upstream, user):
    before = len(upstream.seen)
    status, _, body = gateway.request("GET", "/api/patients/42?sort=_method&fields=method", user, identity=None)
    assert status == 200, body
    [(method, path, _)] = upstream.seen[before:]
    assert method == "GET" and path.startswith("/api/patients/42?")
