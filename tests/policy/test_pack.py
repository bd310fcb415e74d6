"""The default policy pack, rule by rule at its boundaries (tables), evaluated in process; plus the
pack's own Rego tests under the real `opa test` and under the embedded runner."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.policy.conftest import (
    PACK,
    physician,
    registration,
    with_context,
    with_resource,
    with_subject,
)
from ztmesh.policy.answer import Answer
from ztmesh.policy.model import Assurance, Outcome, RegistrationStatus
from ztmesh.policy.opa_inproc import run_tests

Evaluate = Callable[..., Answer]
MINIMUM = {
    "public": 30,
    "internal": 50,
    "confidential": 70,
    "patient_data": 75,
    "research_data": 80,
    "critical_patient_data": 85,
    "financial_data": 85,
}
ALLOW, DENY, CHALLENGE = Outcome.ALLOW, Outcome.DENY, Outcome.CHALLENGE


def _classified(classification: str):
    return with_resource(physician(), classification=classification)


BOUNDARIES = [
    (classification, score, DENY if score < minimum else ALLOW)
    for classification, minimum in MINIMUM.items()
    if classification != "critical_patient_data"
    for score in (minimum - 1, minimum - 0.01, minimum, minimum + 1)
]


@pytest.mark.parametrize(("classification", "score", "outcome"), BOUNDARIES)
def test_minimum_trust_per_classification(answer: Evaluate, classification: str, score: float, outcome: Outcome):
    result = answer(_classified(classification), score)
    assert result.outcome is outcome
    if outcome is DENY:
        assert result.reasons == (
            f"trust score {score:g} is below the minimum {MINIMUM[classification]} for {classification}",
        )
    else:
        assert result.reasons == (
            f"trust score {score:g} meets the minimum {MINIMUM[classification]} for {classification}",
        )


@pytest.mark.parametrize(
    ("score", "outcome"),
    [
        (0, DENY),
        (74, DENY),
        (74.99, DENY),
        (75, CHALLENGE),
        (80, CHALLENGE),
        (84.99, CHALLENGE),
        (85, ALLOW),
        (86, ALLOW),
    ],
)
def test_critical_patient_data_step_up_band(answer: Evaluate, score: float, outcome: Outcome):
    result = answer(_classified("critical_patient_data"), score)
    assert result.outcome is outcome
    if outcome is CHALLENGE:
        assert result.step_up == ("mfa", "supervisor_approval")
        assert result.reasons == (
            f"trust score {score:g} is below the minimum 85 for critical_patient_data: step-up required",
        )
        assert result.obligations == ()
    else:
        assert result.step_up == ()


CONSENT = [
    # (purpose, consents, classification, outcome, reason)
    ("treatment", ("treatment",), "patient_data", ALLOW, ""),
    ("treatment", ("treatment", "research"), "critical_patient_data", ALLOW, ""),
    ("research", ("treatment",), "patient_data", DENY, "the data subject has not consented to processing for research"),
    ("marketing", (), "critical_patient_data", DENY, "the data subject has not consented to processing for marketing"),
    ("", ("treatment",), "patient_data", DENY, "patient_data requires a declared processing purpose (LGPD)"),
    ("", (), "internal", ALLOW, ""),
    ("billing", (), "financial_data", ALLOW, ""),
]


@pytest.mark.parametrize(("purpose", "consents", "classification", "outcome", "reason"), CONSENT)
def test_consent_for_the_processing_purpose(answer: Evaluate, purpose, consents, classification, outcome, reason):
    request = with_context(physician(), purpose=purpose)
    request = with_resource(request, classification=classification, consented_purposes=consents)
    result = answer(request, 95)
    assert result.outcome is outcome
    if reason:
        assert result.reasons == (reason,)


REGISTRATION = [
    # (action, status, council, outcome, reason)
    ("prescribe", RegistrationStatus.ACTIVE, "CRM", ALLOW, ""),
    ("prescribe", RegistrationStatus.SUSPENDED, "CRM", DENY,
     "clinical action prescribe requires an active professional registration (registration: suspended)"),
    ("prescribe", RegistrationStatus.EXPIRED, "CRM", DENY,
     "clinical action prescribe requires an active professional registration (registration: expired)"),
    ("diagnose", None, "", DENY,
     "clinical action diagnose requires an active professional registration (registration: none)"),
    ("prescribe", RegistrationStatus.ACTIVE, "COREN", DENY,
     "clinical action prescribe requires a registration with CRM or CRO, not COREN"),
    ("administer_medication", RegistrationStatus.ACTIVE, "COREN", ALLOW, ""),
    ("dispense_medication", RegistrationStatus.ACTIVE, "CRM", DENY,
     "clinical action dispense_medication requires a registration with CRF, not CRM"),
    ("read", None, "", ALLOW, ""),
    ("read", RegistrationStatus.SUSPENDED, "CRM", ALLOW, ""),  # reading is not a clinical act
]  # fmt: skip


@pytest.mark.parametrize(("action", "status", "council", "outcome", "reason"), REGISTRATION)
def test_clinical_actions_need_an_active_registration(answer: Evaluate, action, status, council, outcome, reason):
    reg = registration(status, council) if status is not None else None
    result = answer(with_subject(physician(action=action), registration=reg), 95)
    assert result.outcome is outcome
    if reason:
        assert result.reasons == (reason,)


def test_compliance_violation_beats_the_step_up_band_and_every_reason_is_given(answer: Evaluate):
    request = with_resource(physician(action="prescribe"), classification="critical_patient_data")
    request = with_subject(
        with_context(request, purpose="billing"), registration=registration(RegistrationStatus.EXPIRED)
    )
    result = answer(request, 80)
    assert result.outcome is DENY
    assert result.reasons == (
        "clinical action prescribe requires an active professional registration (registration: expired)",
        "the data subject has not consented to processing for billing",
    )


OBLIGATIONS = [
    # (classification, action, score, obligations)
    ("patient_data", "read", 90, ("encrypt_transmission", "log_all_access")),
    ("critical_patient_data", "read", 90, ("encrypt_transmission", "log_all_access")),
    ("patient_data", "write", 79.99, ("audit_all_changes", "encrypt_transmission", "log_all_access")),
    ("patient_data", "write", 80, ("encrypt_transmission", "log_all_access")),
    ("patient_data", "prescribe", 76, ("audit_all_changes", "encrypt_transmission", "log_all_access")),
    ("internal", "delete", 60, ("audit_all_changes",)),
    ("internal", "read", 60, ()),
    ("research_data", "create", 80, ()),
    ("public", "update", 79, ("audit_all_changes",)),
]


@pytest.mark.parametrize(("classification", "action", "score", "obligations"), OBLIGATIONS)
def test_obligations_of_an_allowed_request(answer: Evaluate, classification, action, score, obligations):
    result = answer(with_resource(physician(action=action), classification=classification), score)
    assert result.outcome is ALLOW
    assert result.obligations == obligations


def test_denied_and_challenged_requests_carry_no_obligations(answer: Evaluate):
    assert answer(physician(action="write"), 50).obligations == ()
    assert answer(_classified("critical_patient_data"), 80).obligations == ()


def test_blocklisted_source_is_denied_whatever_the_score(answer: Evaluate):
    result = answer(physician(), 99, flags=["network_blocklisted"])
    assert (result.outcome, result.reasons) == (DENY, ("source address is on the threat block list",))


def test_end_to_end_a_physician_in_business_hours_is_allowed(make_engine):
    decision = make_engine().decide(physician())
    assert decision.outcome is ALLOW, decision.reasons
    assert decision.obligations == ("encrypt_transmission", "log_all_access")
    assert [f.name for f in decision.factors] == ["identity", "device", "network", "behaviour", "context"]
    assert decision.trust_score == pytest.approx(sum(f.contribution for f in decision.factors))
    assert decision.policy_revision and decision.decision_id and decision.request_id == "req-1"


def test_end_to_end_single_factor_login_on_critical_data_is_challenged(make_engine):
    request = with_subject(physician(), auth_method="pwd", assurance=Assurance.LOW)
    decision = make_engine().decide(with_resource(request, classification="critical_patient_data"))
    assert 75 <= decision.trust_score < 85
    assert decision.outcome is CHALLENGE and decision.step_up == ("mfa", "supervisor_approval")


def test_pack_rego_tests_pass_under_opa(opa_bin: Path):
    run = subprocess.run([str(opa_bin), "test", str(PACK)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS:" in run.stdout


def test_pack_rego_tests_pass_under_the_embedded_runner(pack):
    results = run_tests(pack.modules, pack.tests, pack.data)
    assert len(results) >= 15
    assert [r.name for r in results if not r.passed] == []
