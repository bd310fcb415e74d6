# ztmesh default policy pack (healthcare, LGPD): one decision document per request.
#
# Input: the request as the policy service normalises it (every field present, see
# docs/policy-pack.md) plus `input.trust`: the NIST SP 800-207 trust score (0-100), its factors (0-1)
# and flags. Output, at data.ztmesh.authz.decision:
#   {"outcome": "allow"|"deny"|"challenge", "reasons": [..], "obligations": [..], "step_up": [..]}
# Precedence: any deny reason wins; then a step-up band turns the answer into a challenge; else allow.
# Thresholds and lists are data (data.json, data.ztmesh_pack), not code. References are spelled out
# in full rather than aliased through helper rules: each rule lookup costs the embedded engine time
# on every decision, and the service passes Rego only the input paths the policies mention.
package ztmesh.authz

decision := {
	"outcome": "deny",
	"reasons": sort(deny),
	"obligations": [],
	"step_up": [],
} if {
	count(deny) > 0
} else := {
	"outcome": "challenge",
	"reasons": [sprintf("trust score %v is below the minimum %v for %s: step-up required", [
		input.trust.score,
		data.ztmesh_pack.minimum_trust[input.resource.classification],
		input.resource.classification,
	])],
	"obligations": [],
	"step_up": data.ztmesh_pack.step_up_bands[input.resource.classification].step_up,
} if {
	in_step_up_band
} else := {
	"outcome": "allow",
	"reasons": [sprintf("trust score %v meets the minimum %v for %s", [
		input.trust.score,
		data.ztmesh_pack.minimum_trust[input.resource.classification],
		input.resource.classification,
	])],
	"obligations": sort(obligations),
	"step_up": [],
}

# --- trust against the classification's minimum ---------------------------------------------------

# Just under the minimum of a classification with a band (critical patient data: 75 <= score < 85),
# a request that breaks no other rule may be completed by a step-up instead of being refused.
in_step_up_band if {
	input.trust.score < data.ztmesh_pack.minimum_trust[input.resource.classification]
	input.trust.score >= data.ztmesh_pack.step_up_bands[input.resource.classification].floor
}

deny contains msg if {
	not data.ztmesh_pack.minimum_trust[input.resource.classification]
	msg := sprintf("unknown classification %s", [input.resource.classification])
}

deny contains msg if {
	input.trust.score < data.ztmesh_pack.minimum_trust[input.resource.classification]
	not in_step_up_band
	msg := sprintf("trust score %v is below the minimum %v for %s", [
		input.trust.score,
		data.ztmesh_pack.minimum_trust[input.resource.classification],
		input.resource.classification,
	])
}

# Hard signals from the trust algorithm (e.g. a source address on the threat block list).
deny contains msg if {
	some flag in input.trust.flags
	msg := data.ztmesh_pack.deny_flags[flag]
}

# --- compliance: each violation is a deny reason, whatever the trust score ------------------------

# LGPD art. 11: health data is processed only for a declared purpose the data subject consented to.
# The consents travel with the resource, as the record holder knows them.
deny contains msg if {
	input.resource.classification in data.ztmesh_pack.consent_required
	input.context.purpose == ""
	msg := sprintf("%s requires a declared processing purpose (LGPD)", [input.resource.classification])
}

deny contains msg if {
	input.resource.classification in data.ztmesh_pack.consent_required
	input.context.purpose != ""
	not input.context.purpose in input.resource.consented_purposes
	msg := sprintf("the data subject has not consented to processing for %s", [input.context.purpose])
}

# A clinical act (prescribing, diagnosing...) needs an active registration with a council that
# licenses it: CRM for physicians, CRO for dentists, COREN for nursing, CRF for pharmacists.
deny contains msg if {
	data.ztmesh_pack.clinical_actions[input.action]
	input.subject.registration.status != "active"
	msg := sprintf("clinical action %s requires an active professional registration (registration: %s)", [
		input.action,
		input.subject.registration.status,
	])
}

deny contains msg if {
	councils := data.ztmesh_pack.clinical_actions[input.action]
	input.subject.registration.status == "active"
	not input.subject.registration.council in councils
	msg := sprintf("clinical action %s requires a registration with %s, not %s", [
		input.action,
		concat(" or ", councils),
		input.subject.registration.council,
	])
}

# --- obligations of an allowed request: what the enforcement point must do while serving it --------

obligations contains name if some name in data.ztmesh_pack.obligations[input.resource.classification]

# Changes made with less than high trust get a full audit of what changed.
obligations contains "audit_all_changes" if {
	input.trust.score < data.ztmesh_pack.audit_changes_below
	input.action in data.ztmesh_pack.write_actions
}
