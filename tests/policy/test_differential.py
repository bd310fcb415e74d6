"""Differential: the default engine (OPA in process) and the reference (a real OPA server, with the same
bundle pushed to it) give identical decisions, reasons, obligations and step-ups on generated
requests — seeded, so a failure replays."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ztmesh.policy.answer import parse_answer
from ztmesh.policy.inputs import rego_input
from ztmesh.policy.model import (
    Assurance,
    DecisionRequest,
    Device,
    Fault,
    Registration,
    RegistrationStatus,
    RequestContext,
    Resource,
    Signal,
    Subject,
)
from ztmesh.policy.signals import MemorySignalStore
from ztmesh.policy.trust import TrustResult

CLASSIFICATIONS = ["public", "internal", "confidential", "patient_data", "research_data", "critical_patient_data",
                   "financial_data"]  # fmt: skip
ACTIONS = ["read", "write", "create", "delete", "export", "prescribe", "diagnose", "sign_report", "order_exam",
           "administer_medication", "dispense_medication"]  # fmt: skip
PURPOSES = ["treatment", "research", "billing", "marketing", "emergency"]
ADDRESSES = ["10.1.2.3", "172.16.5.4", "8.8.8.8", "198.51.100.20", "192.0.2.66", "2001:db8:bad::7", "::1", ""]
METHODS = ["webauthn", "pwd,otp", "pwd", "sms", "mtls", "", "push,pwd"]
SUBJECTS = [f"user-{i}" for i in range(40)]
SIGNALS = ["failed_login", "mfa_failure", "anomaly", "policy_violation", "impossible_travel", "malware_detected"]


def random_request(rng: random.Random) -> DecisionRequest:
    """Mostly well-behaved requests with one or two things off, so every rule and outcome shows up."""

    def often(p: float = 0.85) -> bool:
        return rng.random() < p

    registration = None
    if often(0.8):
        registration = Registration(
            "CRM" if often(0.8) else rng.choice(["CRO", "COREN", "CRF", "CRP"]), "SP", str(rng.randrange(10**6)),
            RegistrationStatus.ACTIVE if often(0.8) else rng.choice(list(RegistrationStatus)),
        )  # fmt: skip
    device = None
    if often(0.9):
        device = Device(
            f"dev-{rng.randrange(100)}", often(), often(), "linux",
            rng.choice([None, 0, 7, 14, 15, 30, 60, 89, 90, 365]) if not often(0.6) else 3, often(), often(),
        )  # fmt: skip
    purpose = rng.choice(PURPOSES) if often(0.9) else ""
    consents = {purpose} if purpose and often(0.8) else set()
    consents.update(rng.sample(PURPOSES, rng.randrange(3)))
    return DecisionRequest(
        subject=Subject(
            rng.choice(SUBJECTS), tuple(rng.sample(["physician", "nurse", "on_call", "clerk"], rng.randrange(3))),
            rng.choice(METHODS), rng.choice(list(Assurance)) if not often(0.5) else Assurance.MEDIUM, registration,
        ),
        resource=Resource(
            rng.choice(["patient_record", "lab_result", "invoice"]),
            rng.choice(CLASSIFICATIONS + ["critical_patient_data"] * 4 + ["patient_data"] * 2),
            f"r-{rng.randrange(1000)}", "hospital-a", tuple(sorted(consents)),
        ),
        action=rng.choice(ACTIONS) if not often(0.4) else rng.choice(["read", "write"]),
        device=device,
        context=RequestContext(rng.choice(ADDRESSES) if not often(0.6) else "10.1.2.3", rng.choice(["ehr/2.1", ""]),
                               None, purpose, f"req-{rng.randrange(10**9)}"),
        attributes={"ward": rng.choice(["icu", "er", "ward-3"])} if rng.random() < 0.3 else {},
    )  # fmt: skip


def _verdict(decision):
    return (decision.outcome, decision.reasons, decision.obligations, decision.step_up, decision.trust_score)


@pytest.mark.slow
def test_embedded_and_opa_agree_on_generated_requests(make_engine, opa_sidecar, clock):
    rng = random.Random(20260310)
    signals = MemorySignalStore()  # one store for both, so both score the same trust
    embedded = make_engine(signals=signals)
    reference = make_engine(rego=opa_sidecar.engine(), signals=signals)
    assert embedded.bundles.current.revision == reference.bundles.current.revision
    outcomes: Counter[str] = Counter()
    for i in range(1200):
        if rng.random() < 0.15:
            embedded.report_signal(Signal(rng.choice(SUBJECTS), rng.choice(SIGNALS), severity=rng.random()))
        clock.advance(rng.randrange(0, 4 * 3600))  # spreads requests over hours and weekdays
        request = random_request(rng)
        ours, theirs = embedded.decide(request), reference.decide(request)
        assert ours.fault is Fault.NONE and theirs.fault is Fault.NONE, (ours.reasons, theirs.reasons)
        assert _verdict(ours) == _verdict(theirs), f"request #{i}: {request}"
        outcomes[ours.outcome.value] += 1
    # The generated set must exercise every outcome, or agreement would prove little.
    assert min(outcomes.values()) >= 50 and len(outcomes) == 3, outcomes


@pytest.mark.slow
def test_embedded_and_opa_agree_at_the_score_boundaries(pack, pack_engine, opa_sidecar):
    """The trust algorithm rarely lands exactly on a threshold: here the score is chosen, at and
    around every threshold of the pack, with two-decimal scores as the service produces them."""
    rng = random.Random(7)
    opa = opa_sidecar.engine()
    opa.install(pack)
    edges = [t + d for t in (30, 50, 70, 75, 80, 85) for d in (-1, -0.01, 0, 0.01, 1)] + [0, 100, 99.99]
    agreed = 0
    for _ in range(600):
        score = rng.choice(edges) if rng.random() < 0.7 else round(rng.uniform(0, 100), 2)
        flags = ("network_blocklisted",) if rng.random() < 0.05 else ()
        document = rego_input(random_request(rng), TrustResult(score, (), flags, rng.randrange(24), rng.randrange(7)))
        ours = parse_answer(pack_engine.evaluate(pack, document, pack.prune(document)))
        theirs = parse_answer(opa.evaluate(pack, document, document))
        assert ours == theirs, document
        agreed += 1
    opa.close()
    assert agreed == 600
