# The gateway benchmark's OPA-Envoy side: ztmesh's decision for an Envoy request written as one Rego
# policy over opa-envoy-plugin's input (input.attributes = the CheckRequest as protojson), the way a
# team using the OPA-Envoy plugin would write it. It reads the same data as the policy service: the
# default pack's thresholds (data.ztmesh_pack, policies/rego/data.json), the trust weights
# (data.ztmesh_trust, policies/trust/weights.json) and the threat lists (data.ztmesh_threat).
#
# Same trust algorithm (identity, device, network, behaviour, context, weighted to 0-100) and the same
# rules (minimum trust per classification, the critical-data step-up band, threat flags, consent,
# professional registration, obligations). One difference: behaviour history lives in ztmesh's signal
# store, which OPA does not have, so behaviour is taken as clean (1.0) here.
package envoy.authz

http := input.attributes.request.http

labels := input.attributes.contextExtensions

trust_cfg := data.ztmesh_trust

claims := input.attributes.metadataContext.filterMetadata["envoy.filters.http.jwt_authn"].jwt_payload

# --- who ---------------------------------------------------------------------------------------------

default subject := {"id": "", "roles": [], "methods": [], "level": "unspecified"}

acr_levels := {"aal1": "low", "aal2": "medium", "aal3": "high"}

subject := {
	"id": claims.sub,
	"roles": object.get(claims, "roles", []),
	"methods": object.get(claims, "amr", []),
	"level": object.get(acr_levels, lower(object.get(claims, "acr", "")), "unspecified"),
} if {
	claims.sub
} else := {
	"id": input.attributes.source.principal,
	"roles": ["workload"],
	"methods": ["mtls"],
	"level": "high",
} if {
	input.attributes.source.principal != ""
}

# --- trust factors (0-1) -----------------------------------------------------------------------------

method_scores contains object.get(trust_cfg.identity.methods, m, trust_cfg.identity.unknown_method) if {
	some m in subject.methods
}

default method_strength := 0.0

method_strength := max(method_scores) if count(method_scores) > 0

method_strength := trust_cfg.identity.no_method if count(method_scores) == 0

identity := trust_cfg.identity.assurance[subject.level] * method_strength

device_info := claims.device

default patched := 0.0

patched := 1.0 if device_info.patch_age_days <= trust_cfg.device.patch_fresh_days

patched := (trust_cfg.device.patch_stale_days - device_info.patch_age_days) / (trust_cfg.device.patch_stale_days - trust_cfg.device.patch_fresh_days) if {
	device_info.patch_age_days > trust_cfg.device.patch_fresh_days
	device_info.patch_age_days < trust_cfg.device.patch_stale_days
}

device_passes := {
	"managed": object.get(device_info, "managed", false) == true,
	"compliant": object.get(device_info, "compliant", false) == true,
	"disk_encrypted": object.get(device_info, "disk_encrypted", false) == true,
	"endpoint_protection": object.get(device_info, "endpoint_protection", false) == true,
}

default device := 0.0

device := (sum([w | some name, w in trust_cfg.device.checks; name != "patched"; device_passes[name]]) + (trust_cfg.device.checks.patched * patched)) / sum([w | some w in trust_cfg.device.checks]) if {
	device_info
}

source_ip := input.attributes.source.address.socketAddress.address

listed contains i if {
	some i, list in trust_cfg.network.lists
	count(net.cidr_contains_matches(data.ztmesh_threat[trim_suffix(list.file, ".txt")], source_ip)) > 0
}

default network := 0.4

network := trust_cfg.network.lists[min(listed)].score if {
	count(listed) > 0
} else := trust_cfg.network.default if source_ip != ""

flags contains trust_cfg.network.lists[min(listed)].flag if count(listed) > 0

behaviour := 1.0

purpose := object.get(http.headers, "x-processing-purpose", "")

weekdays := {"Monday": 0, "Tuesday": 1, "Wednesday": 2, "Thursday": 3, "Friday": 4, "Saturday": 5, "Sunday": 6}

now := [time.now_ns(), trust_cfg.context.timezone]

on_duty if {
	some role in subject.roles
	role in trust_cfg.context.always_on_roles
}

business_hours if {
	weekdays[time.weekday(now)] in trust_cfg.context.business_days
	hour := time.clock(now)[0]
	hour >= trust_cfg.context.business_start_hour
	hour < trust_cfg.context.business_end_hour
}

off_hours := 1.0 if on_duty

else := 1.0 if business_hours

else := trust_cfg.context.off_hours

no_purpose := 1.0 if purpose != ""

else := trust_cfg.context.purpose_missing

no_agent := 1.0 if object.get(http.headers, "user-agent", "") != ""

else := trust_cfg.context.user_agent_missing

context_factor := (off_hours * no_purpose) * no_agent

total_weight := sum([w | some w in trust_cfg.weights])

# Each factor's contribution rounded to 0.01, as the policy service does, then summed.
contribution(name, f) := round(((10000 * trust_cfg.weights[name]) * f) / total_weight) / 100

score := (((contribution("identity", identity) + contribution("device", device)) + contribution("network", network)) + contribution("behaviour", behaviour)) + contribution("context", context_factor)

# --- the pack's rules ----------------------------------------------------------------------------------

classification := object.get(labels, "classification", "")

consented := [p | some p in split(object.get(labels, "consented_purposes", ""), ","); p != ""]

method_actions := {"GET": "read", "HEAD": "read", "OPTIONS": "read", "POST": "create", "PUT": "write", "PATCH": "write", "DELETE": "delete"}

action := labels.action if labels.action

else := object.get(method_actions, upper(http.method), lower(http.method))

registration_status := lower(object.get(object.get(claims, "registration", {}), "status", "none"))

minimum := data.ztmesh_pack.minimum_trust[classification]

in_step_up_band if {
	score < minimum
	score >= data.ztmesh_pack.step_up_bands[classification].floor
}

deny contains "subject.id: is required" if subject.id == ""

deny contains sprintf("unknown classification %s", [classification]) if not data.ztmesh_pack.minimum_trust[classification]

deny contains sprintf("trust score %v is below the minimum %v for %s", [score, minimum, classification]) if {
	score < minimum
	not in_step_up_band
}

deny contains data.ztmesh_pack.deny_flags[flag] if some flag in flags

deny contains sprintf("%s requires a declared processing purpose (LGPD)", [classification]) if {
	classification in data.ztmesh_pack.consent_required
	purpose == ""
}

deny contains sprintf("the data subject has not consented to processing for %s", [purpose]) if {
	classification in data.ztmesh_pack.consent_required
	purpose != ""
	not purpose in consented
}

deny contains sprintf("clinical action %s requires an active professional registration (registration: %s)", [action, registration_status]) if {
	data.ztmesh_pack.clinical_actions[action]
	registration_status != "active"
}

obligations contains name if some name in data.ztmesh_pack.obligations[classification]

obligations contains "audit_all_changes" if {
	score < data.ztmesh_pack.audit_changes_below
	action in data.ztmesh_pack.write_actions
}

# --- the answer, in opa-envoy-plugin's result shape ------------------------------------------------------

result := {
	"allowed": false,
	"http_status": 403,
	"headers": {"content-type": "application/json"},
	"body": json.marshal({"decision": "DENY", "reason": concat("; ", sort(deny))}),
} if {
	count(deny) > 0
} else := {
	"allowed": false,
	"http_status": 401,
	"headers": {
		"content-type": "application/json",
		"x-ztmesh-step-up": concat(",", data.ztmesh_pack.step_up_bands[classification].step_up),
	},
	"body": json.marshal({"decision": "CHALLENGE", "reason": "step-up required"}),
} if {
	in_step_up_band
} else := {
	"allowed": true,
	"headers": {
		"x-ztmesh-trust-score": sprintf("%.1f", [score]),
		"x-ztmesh-obligations": concat(",", sort(obligations)),
	},
}
