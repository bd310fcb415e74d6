"""Bad input: every malformed request is a DENY naming the field (fault invalid_request), and the
JSON reader names unknown or mistyped fields. Also: which input paths a policy can read."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests.policy.conftest import physician, with_context, with_device, with_resource, with_subject
from ztmesh.policy.errors import InvalidRequest
from ztmesh.policy.model import Fault, Outcome, Registration, request_from_mapping
from ztmesh.policy.opa_inproc import analyse_input_paths

BAD_REQUESTS = [
    ("no subject id", with_subject(physician(), id=""), "subject.id: is required"),
    ("huge subject id", with_subject(physician(), id="x" * 300), "subject.id: is 300 characters long"),
    ("bad role", with_subject(physician(), roles=("Physician",)), "subject.roles[0]: 'Physician' is not a lower-case"),
    ("too many roles", with_subject(physician(), roles=tuple(f"r{i}" for i in range(65))),
     "subject.roles: has 65 items"),
    ("bad council", with_subject(physician(), registration=Registration("crm/sp")), "subject.registration.council"),
    ("no classification", with_resource(physician(), classification=""), "resource.classification: is required"),
    ("unknown classification", with_resource(physician(), classification="top_secret"),
     "resource.classification: unknown classification 'top_secret'; known: confidential, critical_patient_data"),
    ("no resource type", with_resource(physician(), type=""), "resource.type: is required"),
    ("huge resource id", with_resource(physician(), id="p" * 5000), "resource.id: is 5000 characters long"),
    ("no action", physician(action=""), "action: is required"),
    ("action with spaces", physician(action="read all"), "action: 'read all' is not a lower-case identifier"),
    ("bad ip", with_context(physician(), source_ip="10.0.0.300"), "context.source_ip: '10.0.0.300' is not an IP"),
    ("bad purpose", with_context(physician(), purpose="Treatment!"), "context.purpose"),
    ("huge user agent", with_context(physician(), user_agent="u" * 2000), "context.user_agent: is 2000 characters"),
    ("stale time", with_context(physician(), time=datetime(2020, 1, 1, tzinfo=UTC)),
     "context.time: 2020-01-01T00:00:00+00:00 is more than 300 s away"),
    ("negative patch age", with_device(physician(), patch_age_days=-1), "device.patch_age_days: -1 is outside"),
    ("absurd patch age", with_device(physician(), patch_age_days=10**9), "device.patch_age_days"),
    ("huge attributes", physician(attributes={"blob": "x" * 20000}), "attributes: is 20011 bytes of JSON"),
    ("deep attributes", physician(attributes=json.loads('{"a":' * 12 + "1" + "}" * 12)), "is nested too deeply"),
    ("non-finite attribute", physician(attributes={"x": float("inf")}), "attributes.x: inf is not a finite number"),
    ("too many consents", with_resource(physician(), consented_purposes=tuple(f"p{i}" for i in range(100))),
     "resource.consented_purposes: has 100 items"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "request_", "reason"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_is_denied_with_the_field(make_engine, name, request_, reason):
    decision = make_engine().decide(request_)
    assert decision.outcome is Outcome.DENY and decision.fault is Fault.INVALID_REQUEST
    assert decision.reasons[0].startswith("invalid request: ")
    assert reason in decision.reasons[0], decision.reasons[0]
    assert decision.decision_id  # invalid requests are decisions too, and audited as such


def test_batch_over_the_maximum_is_refused(make_engine):
    engine = make_engine()
    with pytest.raises(InvalidRequest, match="requests: 101 requests; the maximum per batch is 100"):
        engine.decide_batch([physician()] * 101)
    decisions = engine.decide_batch([physician(), physician(action="")])
    assert [d.outcome for d in decisions] == [Outcome.ALLOW, Outcome.DENY]


GOOD_JSON = {
    "subject": {"id": "dr.ana", "roles": ["physician"], "auth_method": "otp", "assurance": "MEDIUM",
                "registration": {"council": "CRM", "region": "SP", "number": "1", "status": "active"}},
    "device": {"id": "d", "managed": True, "patch_age_days": 3},
    "resource": {"type": "patient_record", "classification": "patient_data", "consented_purposes": ["treatment"]},
    "action": "read",
    "context": {"source_ip": "10.0.0.1", "time": "2026-03-10T13:00:00Z", "purpose": "treatment"},
    "attributes": {"ward": "icu"},
}  # fmt: skip


def test_json_form_round_trip():
    request = request_from_mapping(GOOD_JSON)
    assert request.subject.assurance.value == "medium" and request.device.patch_age_days == 3
    assert request.context.time == datetime(2026, 3, 10, 13, tzinfo=UTC)
    assert request.attributes == {"ward": "icu"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("subject"), "subject: is required"),
        (lambda d: d["subject"].update(nickname="a"), "subject.nickname: unknown field"),
        (lambda d: d["subject"].update(roles="physician"), "subject.roles: expected list"),
        (lambda d: d["subject"].update(roles=[1]), r"subject.roles\[0\]: expected a string"),
        (lambda d: d["subject"].update(assurance="ultra"), "subject.assurance: unknown value 'ultra'"),
        (lambda d: d["subject"]["registration"].update(status="revoked"), "subject.registration.status: unknown"),
        (lambda d: d["device"].update(patch_age_days=True), "device.patch_age_days: expected a number"),
        (lambda d: d["device"].update(managed="yes"), "device.managed: expected bool"),
        (lambda d: d["context"].update(time="yesterday"), "context.time: not an RFC 3339 time"),
        (lambda d: d["context"].update(time="2026-03-10T13:00:00"), "context.time: .* has no UTC offset"),
        (lambda d: d.update(resource=[]), "resource: expected an object"),
    ],
)
def test_json_form_errors_name_the_field(change, message):
    document = json.loads(json.dumps(GOOD_JSON))
    change(document)
    with pytest.raises(InvalidRequest, match=message):
        request_from_mapping(document)


@pytest.mark.parametrize(
    ("source", "paths"),
    [
        ("x if input.a.b == 1", (("a", "b"),)),
        ('x if input["a"].b == 1', (("a", "b"),)),
        ("x if input.a[y] == 1", (("a",),)),
        ("x if some v in input.a.list", (("a", "list"),)),
        ("x if { input.a.b; input.a }", (("a",),)),
        ("import input.device as dev\nx if dev.managed", (("device",),)),
        ("x if f(input.c)\nf(v) := v", (("c",),)),
        ("x if input[k] == 1", None),
        ('x if object.get(input, "a", 1)', None),
        ("import input\nx if input.a", None),
    ],
)
def test_input_paths_a_policy_can_read(source, paths):
    assert analyse_input_paths({"m.rego": f"package m\n\n{source}\n"}) == paths


def test_the_pack_reads_only_what_it_decides_on(pack):
    assert pack.input_paths == (
        ("action",), ("context", "purpose"), ("resource", "classification"), ("resource", "consented_purposes"),
        ("subject", "registration", "council"), ("subject", "registration", "status"), ("trust", "flags"),
        ("trust", "score"),
    )  # fmt: skip
