"""Envoy external authorization (ext_authz v3 `Check`) on top of the policy decision.

A CheckRequest becomes a DecideRequest: the subject from the claims of a JWT that Envoy's jwt_authn
filter verified (never from an unverified header), else the SPIFFE ID of the mTLS peer Envoy saw;
the HTTP method as the action (a route may name its own); the resource type and classification
from the route's `context_extensions`. ALLOW adds `x-ztmesh-decision-id` and `x-ztmesh-trust-score`
upstream, DENY is a 403 with a short JSON body, CHALLENGE a 401 naming the step-up. Incoming
`x-ztmesh-*` headers are removed so nobody can smuggle a decision upstream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2, status_pb2

from ztmesh._proto.policy.v1 import policy_pb2
from ztmesh.policy.headers import DECISION_ID, OBLIGATIONS, PREFIX, STEP_UP, TRUST_SCORE

DecideFn = Callable[[policy_pb2.DecideRequest, str], policy_pb2.DecideResponse]

JWT_FILTER = "envoy.filters.http.jwt_authn"
PURPOSE_HEADER = "x-processing-purpose"
METHOD_ACTIONS = {
    "GET": "read",
    "HEAD": "read",
    "OPTIONS": "read",
    "POST": "create",
    "PUT": "write",
    "PATCH": "write",
    "DELETE": "delete",
}
_ASSURANCE = {
    "aal1": policy_pb2.ASSURANCE_LEVEL_LOW,
    "aal2": policy_pb2.ASSURANCE_LEVEL_MEDIUM,
    "aal3": policy_pb2.ASSURANCE_LEVEL_HIGH,
}
_REGISTRATION = {
    "active": policy_pb2.REGISTRATION_STATUS_ACTIVE,
    "suspended": policy_pb2.REGISTRATION_STATUS_SUSPENDED,
    "expired": policy_pb2.REGISTRATION_STATUS_EXPIRED,
}


def verified_claims(attributes: attribute_context_pb2.AttributeContext) -> dict[str, Any]:
    """Claims of the JWT verified by Envoy's jwt_authn filter (`payload_in_metadata`), if any."""
    jwt = attributes.metadata_context.filter_metadata.get(JWT_FILTER)
    if jwt is None:
        return {}
    payloads = json_format.MessageToDict(jwt)
    for value in payloads.values():  # one entry, named by the filter's payload_in_metadata
        if isinstance(value, dict) and value.get("sub"):
            return value
    return {}


def _subject(attributes: attribute_context_pb2.AttributeContext, claims: Mapping[str, Any]) -> policy_pb2.Subject:
    if claims:
        registration = claims.get("registration") or {}
        return policy_pb2.Subject(
            id=str(claims["sub"]),
            roles=[str(r) for r in claims.get("roles", [])],
            auth_method=",".join(claims.get("amr", []))
            if isinstance(claims.get("amr"), list)
            else str(claims.get("amr", "")),
            assurance=_ASSURANCE.get(str(claims.get("acr", "")).lower(), policy_pb2.ASSURANCE_LEVEL_UNSPECIFIED),
            registration=policy_pb2.ProfessionalRegistration(
                council=str(registration.get("council", "")),
                region=str(registration.get("region", "")),
                number=str(registration.get("number", "")),
                status=_REGISTRATION.get(
                    str(registration.get("status", "")).lower(), policy_pb2.REGISTRATION_STATUS_UNSPECIFIED
                ),
            )
            if registration
            else None,
        )
    principal = attributes.source.principal
    if principal:
        # A workload calling through the gateway with its mesh certificate.
        return policy_pb2.Subject(
            id=principal, roles=["workload"], auth_method="mtls", assurance=policy_pb2.ASSURANCE_LEVEL_HIGH
        )
    return policy_pb2.Subject()


def _device(claims: Mapping[str, Any]) -> policy_pb2.Device | None:
    device = claims.get("device")
    if not isinstance(device, dict):
        return None
    known = {f.name for f in policy_pb2.Device.DESCRIPTOR.fields}
    return json_format.ParseDict(
        {k: v for k, v in device.items() if k in known}, policy_pb2.Device(), ignore_unknown_fields=True
    )


def check_to_decide(request: external_auth_pb2.CheckRequest) -> policy_pb2.DecideRequest:
    attributes = request.attributes
    http = attributes.request.http
    headers = {k.lower(): v for k, v in http.headers.items()}
    labels = dict(attributes.context_extensions)
    claims = verified_claims(attributes)
    path = http.path.split("?", 1)[0]
    extra = struct_pb2.Struct()
    extra.update({"http": {"method": http.method, "path": path, "host": http.host}, "route": labels})
    return policy_pb2.DecideRequest(
        subject=_subject(attributes, claims),
        device=_device(claims),
        resource=policy_pb2.Resource(
            type=labels.get("resource_type", ""),
            id=path,
            classification=labels.get("classification", ""),
            consented_purposes=[p for p in labels.get("consented_purposes", "").split(",") if p],
        ),
        action=labels.get("action") or METHOD_ACTIONS.get(http.method.upper(), http.method.lower()),
        context=policy_pb2.RequestContext(
            source_ip=attributes.source.address.socket_address.address,
            user_agent=headers.get("user-agent", ""),
            purpose=headers.get(PURPOSE_HEADER, ""),
            request_id=headers.get("x-request-id", http.id),
        ),
        attributes=extra,
    )


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def decide_to_check(
    decision: policy_pb2.DecideResponse, incoming: Mapping[str, str]
) -> external_auth_pb2.CheckResponse:
    forged = sorted(name for name in incoming if name.lower().startswith(PREFIX))
    if decision.decision == policy_pb2.DECISION_ALLOW:
        headers = [
            _header(DECISION_ID, decision.decision_id),
            _header(TRUST_SCORE, f"{decision.trust_score:.1f}"),
        ]
        if decision.obligations:
            headers.append(_header(OBLIGATIONS, ",".join(decision.obligations)))
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(headers=headers, headers_to_remove=forged),
        )
    challenge = decision.decision == policy_pb2.DECISION_CHALLENGE
    reason = "; ".join(decision.reasons) or ("step-up required" if challenge else "denied by policy")
    body = {"decision": "CHALLENGE" if challenge else "DENY", "decision_id": decision.decision_id, "reason": reason}
    headers = [_header("content-type", "application/json"), _header(DECISION_ID, decision.decision_id)]
    if challenge:
        step_up = ",".join(decision.step_up) or "mfa"
        headers += [
            _header(STEP_UP, step_up),
            _header("www-authenticate", f'ztmesh-step-up methods="{step_up}"'),
        ]
        body["step_up"] = list(decision.step_up)
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.UNAUTHENTICATED if challenge else code_pb2.PERMISSION_DENIED),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(
                code=http_status_pb2.Unauthorized if challenge else http_status_pb2.Forbidden
            ),
            headers=headers,
            body=json.dumps(body, ensure_ascii=False),
        ),
    )


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """`envoy.service.auth.v3.Authorization` served on the policy service's port."""

    def __init__(self, decide: DecideFn) -> None:
        self._decide = decide

    def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        from ztmesh.mesh.interceptors import current_caller

        caller = current_caller()
        incoming = dict(request.attributes.request.http.headers)
        try:
            decision = self._decide(check_to_decide(request), str(caller) if caller else "")
        except Exception as exc:  # fail closed: whatever broke, the answer is DENY with the reason
            decision = policy_pb2.DecideResponse(
                decision=policy_pb2.DECISION_DENY, reasons=[f"internal error: {type(exc).__name__}"]
            )
        return decide_to_check(decision, incoming)
