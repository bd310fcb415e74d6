"""Attack: reach protected data through the gateway under a weaker classification by spelling its path
differently (letter case, trailing slash, query form, percent-encoding, repeated or dot segments,
escaped slashes, suffixes and parameters an upstream may ignore).

Each spelling goes through the real Envoy on the shipped config to the real policy service and the
recording upstream. Safe outcome: the request is judged exactly as the canonical path is (same route
labels in the audit record, same answer, same obligations upstream), or it is not served at all (400,
404) and nothing reaches the upstream. A path no route declares is answered 404 by the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from tests.support.gateway import Gateway
from tests.support.tokens import TokenIssuer, clinician
from tests.support.upstream import Upstream

# Route -> (classification, resource type) as labelled in deploy/envoy/envoy-gateway.yaml.
PROTECTED = {
    "/api/icu": ("critical_patient_data", "icu_record"),
    "/api/patients": ("patient_data", "patient_record"),
    "/api/research": ("research_data", "research_dataset"),
    "/api/billing": ("financial_data", "invoice"),
    "/api/staff": ("internal", "staff_directory"),
}
# The weaker route the springboard spellings start from.
LABELS = {**PROTECTED, "/public": ("public", "public_content")}
REDIRECTS = (301, 302, 307, 308)
NOT_SERVED = (400, 404)


def _alternating(text: str) -> str:
    return "".join(c.upper() if i % 2 else c for i, c in enumerate(text))


def _hex(text: str) -> str:
    return "".join(f"%{ord(c):02x}" for c in text)


def spellings(prefix: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(route it addresses, spelling, statuses that may refuse it) for one protected prefix. The first
    group addresses the route's data in a form every HTTP stack agrees on and must be judged as the
    route; the second is ambiguous (some upstreams strip `;params`, `.json` suffixes, trailing dots, or
    decode twice) and must be judged as the route or not served; the third climbs from a weaker route
    and must be judged as the route it reaches or refused as a malformed path (400). Envoy resolves a
    literal `.;` or `..;` segment as `.` or `..` (servlet containers agree), so the spellings that stay
    under /public address the public route."""
    n = prefix.rsplit("/", 1)[1]
    other = "staff" if n != "staff" else "billing"
    judged = [
        # query and trailing-slash forms
        f"/api/{n}/7", f"/api/{n}", f"/api/{n}/", f"/api/{n}?id=7", f"/api/{n}/?id=7", f"/api/{n}/7?tab=notes",
        f"/api/{n}/7/", f"/api/{n}?a=1&id=7&a=2", f"/api/{n}/7?x=../../public", f"/api/{n}/7?v=1;w=2",
        # letter case
        f"/API/{n}/7", f"/api/{n.upper()}/7", f"/Api/{n.title()}/7", f"/aPi/{_alternating(n)}/7",
        f"/API/{n.upper()}?ID=7", f"/API/{n.upper()}", f"/API/{n.upper()}/",
        # repeated and dot segments
        f"//api/{n}/7", f"/api//{n}/7", f"/api/{n}//7", f"///api///{n}///7", f"/./api/{n}/7", f"/api/./{n}/7",
        f"/api/{n}/./7", f"/api/x/../{n}/7", f"/x/../api/{n}/7", f"/public/../api/{n}/7", f"/../api/{n}/7",
        f"/api/{n}/7/..", f"/api/{n}/7/../8", f"/api/{other}/../{n}/7", f"/API/{other}/../{n.upper()}/7",
        # percent-encoded unreserved characters and dot segments
        f"/api/x/%2e%2e/{n}/7", f"/api/x/%2E%2E/{n}/7", f"/api/%2e/{n}/7", f"/api/%{ord(n[0]):02x}{n[1:]}/7",
        f"/api/%{ord(n[0].upper()):02X}{n[1:]}/7", f"/api/{_hex(n)}/7", f"/%61pi/{n}/7", f"/%41PI/{n}",
        f"/api/{n[:-1]}%{ord(n[-1]):02x}", f"/api/{n}/%37",
        # escaped and back slashes (redirected to the unescaped path, which is then judged)
        f"/api%2f{n}/7", f"/api%2F{n}%2F7", f"/api/{n}%2f7", f"/api%5c{n}/7", f"/API%2F{n.upper()}/7", f"/api\\{n}/7",
        # absolute form
        f"https://gateway.example/API/{n.upper()}/7",
    ]  # fmt: skip
    judged_or_not_served = [
        f"/api/{n};x=1/7", f"/api/{n}/7;v=1", f"/api/{n}.json", f"/api/{n}%20/7", f"/api/%25{ord(n[0]):02x}{n[1:]}/7",
        f"/api/{n}%2e/7", f"/api/{n}./7", f"/api/{n}%3Fid=7", f"/api/{n}%00/7", f"/api/{n}/7#top", f"/api/{n}%23/7",
    ]  # fmt: skip
    springboards = [
        # a weaker route as a springboard: Envoy keeps `..;` and `.;` as ordinary segments (not dot
        # segments), while Java servlet containers drop `;params` first and then resolve the `..`
        f"/public/%2e%2e;{prefix}/7", f"/public/%2e%2e%3b{prefix}/7", f"/public/%2e%2e%3B{prefix}/7",
        f"/public/..;{prefix}/7", f"/PUBLIC/%2E%2E;{prefix}/7", f"/public/..%3b{prefix}/7",
        f"/public/.%2e;{prefix}/7", f"/public/%2e.;x=1{prefix}/7", f"/public/..;/..;{prefix}/7",
        f"/public/x/..;/..;{prefix}/7", f"/api/{other}/..;/{n}/7", f"/api/{other}/%2e%2e;/{n}/7",
        f"{prefix};jsessionid=x/7", f"{prefix}/7;jsessionid=x", f"{prefix}%3bjsessionid=x/7",
        f"/public;x/..{prefix}/7", f"/public/..%5c..;{prefix}/7", f"/public/...;{prefix}/7",
    ]  # fmt: skip
    into_public = [f"/public/.;{prefix}/7", f"/public/x/..;{prefix}", f"/public/x/.;/..;{prefix}/7"]
    return [
        *((prefix, s, ()) for s in judged),
        *((prefix, s, NOT_SERVED) for s in judged_or_not_served),
        *((prefix, s, (400,)) for s in springboards),
        *(("/public", s, (400,)) for s in into_public),
    ]


TABLE = [row for prefix in PROTECTED for row in spellings(prefix)]


@dataclass(frozen=True)
class Answer:
    status: int
    path: str  # the path finally asked (after following a gateway redirect)
    decision_id: str
    reached: list[tuple[str, str, dict[str, str]]]


@pytest.fixture(scope="module")
def user(idp: TokenIssuer) -> dict[str, str]:
    """Dr. Ana with a password only (AAL1, trust ~80), for treatment: the routes answer differently
    (ICU: step-up 401, billing: 403, patients: 200 with obligations), and none like a catch-all would."""
    token = idp.token(clinician(acr="aal1", amr=["pwd"]))
    return {"authorization": f"Bearer {token}", "user-agent": "ehr/2.1", "x-processing-purpose": "treatment"}


def ask(gateway: Gateway, upstream: Upstream, path: str, headers: dict[str, str]) -> Answer:
    """One GET through the gateway, following a redirect the gateway itself answers (escaped slashes)."""
    before = len(upstream.seen)
    status, response_headers, _ = gateway.request("GET", path, headers, identity=None)
    if status in REDIRECTS:
        assert upstream.seen[before:] == [], f"{path!r}: a redirect must not reach the upstream"
        location = urlsplit(response_headers["location"])
        path = location.path + (f"?{location.query}" if location.query else "")
        status, response_headers, _ = gateway.request("GET", path, headers, identity=None)
    reached = upstream.seen[before:]
    decision_id = response_headers.get("x-ztmesh-decision-id", "")
    if reached:
        decision_id = reached[0][2].get("x-ztmesh-decision-id", "")
    return Answer(status, path, decision_id, reached)


@pytest.fixture(scope="module")
def canonical(gateway: Gateway, upstream: Upstream, user: dict[str, str]) -> dict[str, Answer]:
    return {prefix: ask(gateway, upstream, f"{prefix}/7", user) for prefix in LABELS}


def test_the_canonical_paths_are_judged_by_their_routes(gateway, upstream, policy_service, canonical):
    statuses = {prefix: answer.status for prefix, answer in canonical.items()}
    assert statuses["/api/icu"] == 401 and statuses["/api/billing"] == 403 and statuses["/api/patients"] == 200
    for prefix, answer in canonical.items():
        record = policy_service.decision_record(answer.decision_id)
        classification, resource_type = LABELS[prefix]
        assert record["details"]["classification"] == classification
        assert record["resource"] == f"{resource_type}/{prefix}/7"


@pytest.mark.parametrize(("prefix", "spelling", "refusals"), TABLE, ids=[f"{p}:{s}" for p, s, _ in TABLE])
def test_every_spelling_is_judged_as_its_route_or_not_served(
    gateway, upstream, policy_service, user, canonical, prefix, spelling, refusals
):
    answer = ask(gateway, upstream, spelling, user)
    for _, received, _ in answer.reached:
        # A `;param` reaching the upstream is one an upstream may strip before resolving `..`.
        received_path = received.split("?", 1)[0].lower()
        assert ";" not in received_path and "%3b" not in received_path, received
    if answer.status in refusals:
        assert answer.reached == [] and not answer.decision_id, "not served, yet asked or forwarded"
        return
    assert answer.decision_id, f"{spelling!r} answered {answer.status} without a decision"
    record = policy_service.decision_record(answer.decision_id)
    classification, resource_type = LABELS[prefix]
    assert record["details"]["classification"] == classification, "judged under another route"
    # ext_authz saw the normalised path: no dot segments, repeated slashes or escapes left to reinterpret.
    judged_path = record["resource"].removeprefix(f"{resource_type}/")
    assert judged_path.lower().startswith(prefix), record["resource"]
    for leftover in ("//", "/./", "/../", "%", "\\", ";", "/."):
        assert leftover not in judged_path, f"{leftover!r} in the judged path {judged_path!r}"
    expected = canonical[prefix]
    assert answer.status == expected.status
    if expected.status == 200:
        [(_, _, headers)] = answer.reached
        [(_, _, canonical_headers)] = expected.reached
        for name in ("x-ztmesh-trust-score", "x-ztmesh-obligations"):
            assert headers.get(name) == canonical_headers.get(name), name
    else:
        assert answer.reached == []


@pytest.mark.parametrize("path", ["/api/unknown/1", "/api", "/api/", "/anything", "/", "/api/icux/7", "/apis/icu/7"])
def test_a_path_no_route_declares_is_not_served(gateway, upstream, user, path):
    checks = gateway.stat("http.gateway.ext_authz.ok") + gateway.stat("http.gateway.ext_authz.denied")
    answer = ask(gateway, upstream, path, user)
    assert answer.status == 404 and answer.reached == []
    assert gateway.stat("http.gateway.ext_authz.ok") + gateway.stat("http.gateway.ext_authz.denied") == checks
