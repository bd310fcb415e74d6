# Unit tests of the default pack; run by `opa test policies/rego` and by the policy service before it
# accepts a bundle (`ztmesh policy test`).
package ztmesh.authz_test

import data.ztmesh.authz

# A request as the policy service normalises it; `p` overrides the parts a test varies.
req(p) := {
	"subject": {
		"id": "dr.ana",
		"roles": ["physician"],
		"auth_method": "otp",
		"assurance": object.get(p, "assurance", "medium"),
		"registration": {
			"council": object.get(p, "council", "CRM"),
			"region": "SP",
			"number": "123456",
			"status": object.get(p, "registration", "active"),
		},
	},
	"device": {
		"id": "laptop-7", "present": true, "managed": true, "compliant": true, "os": "linux",
		"patch_age_days": 3, "disk_encrypted": true, "endpoint_protection": true,
	},
	"resource": {
		"type": "patient_record",
		"id": "p-42",
		"classification": object.get(p, "classification", "patient_data"),
		"owner": "hospital-a",
		"consented_purposes": object.get(p, "consents", ["treatment"]),
	},
	"action": object.get(p, "action", "read"),
	"context": {
		"source_ip": "10.0.0.7", "user_agent": "ehr/1.0",
		"purpose": object.get(p, "purpose", "treatment"),
		"local_hour": 10, "weekday": 2,
	},
	"attributes": {},
	"trust": {"score": object.get(p, "score", 90), "factors": {}, "flags": object.get(p, "flags", [])},
}

outcome(p) := o if {
	o := authz.decision.outcome with input as req(p)
}

test_patient_data_boundary if {
	outcome({"score": 74}) == "deny"
	outcome({"score": 74.99}) == "deny"
	outcome({"score": 75}) == "allow"
	outcome({"score": 76}) == "allow"
}

test_minimum_per_classification if {
	pack := data.ztmesh_pack
	without_band := {c: m | some c, m in pack.minimum_trust; not pack.step_up_bands[c]}
	count(without_band) == 6
	every classification, minimum in without_band {
		outcome({"classification": classification, "score": minimum - 0.01}) == "deny"
		outcome({"classification": classification, "score": minimum}) == "allow"
	}
}

test_critical_patient_data_step_up_band if {
	outcome({"classification": "critical_patient_data", "score": 74.99}) == "deny"
	outcome({"classification": "critical_patient_data", "score": 75}) == "challenge"
	outcome({"classification": "critical_patient_data", "score": 84.99}) == "challenge"
	outcome({"classification": "critical_patient_data", "score": 85}) == "allow"
}

test_challenge_names_the_step_up if {
	d := authz.decision with input as req({"classification": "critical_patient_data", "score": 80})
	d.step_up == ["mfa", "supervisor_approval"]
	d.reasons == ["trust score 80 is below the minimum 85 for critical_patient_data: step-up required"]
	d.obligations == []
}

test_compliance_violation_beats_the_step_up_band if {
	outcome({"classification": "critical_patient_data", "score": 80, "purpose": "marketing"}) == "deny"
}

test_patient_data_needs_a_consented_purpose if {
	d := authz.decision with input as req({"purpose": "research", "score": 99})
	d.outcome == "deny"
	d.reasons == ["the data subject has not consented to processing for research"]
}

test_patient_data_needs_a_declared_purpose if {
	d := authz.decision with input as req({"purpose": "", "score": 99})
	d.reasons == ["patient_data requires a declared processing purpose (LGPD)"]
}

test_consent_is_not_required_for_internal_data if {
	outcome({"classification": "internal", "purpose": "", "consents": [], "score": 60}) == "allow"
}

test_clinical_action_needs_an_active_registration if {
	outcome({"action": "prescribe", "registration": "active"}) == "allow"
	outcome({"action": "prescribe", "registration": "suspended"}) == "deny"
	outcome({"action": "prescribe", "registration": "expired"}) == "deny"
	outcome({"action": "prescribe", "registration": "none"}) == "deny"
	outcome({"action": "read", "registration": "none"}) == "allow"
}

test_clinical_action_needs_the_right_council if {
	d := authz.decision with input as req({"action": "prescribe", "council": "COREN"})
	d.reasons == ["clinical action prescribe requires a registration with CRM or CRO, not COREN"]
	outcome({"action": "administer_medication", "council": "COREN"}) == "allow"
}

test_every_deny_reason_is_reported if {
	d := authz.decision with input as req({"action": "prescribe", "registration": "suspended", "score": 10, "purpose": "billing"})
	d.outcome == "deny"
	count(d.reasons) == 3
}

test_patient_data_obligations if {
	d := authz.decision with input as req({"score": 90})
	d.obligations == ["encrypt_transmission", "log_all_access"]
}

test_writes_below_80_are_audited if {
	low := authz.decision with input as req({"action": "write", "score": 79.99})
	low.obligations == ["audit_all_changes", "encrypt_transmission", "log_all_access"]
	high := authz.decision with input as req({"action": "write", "score": 80})
	not "audit_all_changes" in high.obligations
	other := authz.decision with input as req({"classification": "internal", "action": "delete", "score": 60})
	other.obligations == ["audit_all_changes"]
}

test_unknown_classification_is_denied if {
	d := authz.decision with input as req({"classification": "top_secret", "score": 100})
	d.outcome == "deny"
	d.reasons == ["unknown classification top_secret"]
}

test_blocklisted_network_is_denied if {
	d := authz.decision with input as req({"score": 95, "flags": ["network_blocklisted"]})
	d.reasons == ["source address is on the threat block list"]
}

test_decision_shape if {
	every score in [0, 50, 80, 100] {
		d := authz.decision with input as req({"classification": "critical_patient_data", "score": score})
		d.outcome in {"allow", "deny", "challenge"}
		is_array(d.reasons)
		is_array(d.obligations)
		is_array(d.step_up)
	}
}
