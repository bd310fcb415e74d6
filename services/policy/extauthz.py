"""Envoy external authorization (ext_authz v3 `Check`) on top of the policy decision.

A CheckRequest becomes a DecideRequest: the subject from the claims of a JWT that Envoy's jwt_authn
filter verified (never from an unverified header), else the SPIFFE ID of the mTLS peer Envoy saw —
which counts only as a well-formed ID of the mesh's trust domain on the gateway's workload list; any
other client certificate is refused (an audited DENY naming what was presented) before the policy;
the HTTP method as the action (a route may name its own); the resource type and classification
from the route's `context_extensions`. ALLOW adds `x-ztmesh-decision-id` and `x-ztmesh-trust-score`
upstream, DENY is a 403 with a short JSON body, CHALLENGE a 401 naming the step-up. Incoming
`x-ztmesh-*` headers are removed so nobody can smuggle a decision upstream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import grpc
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2, status_pb2

from ztmesh._proto.policy.v1 import policy_pb2
from ztmesh.mesh.edge import caller_id
from ztmesh.mesh.errors import SpiffeIdError
from ztmesh.mesh.spiffe import SpiffeId
from ztmesh.policy.decider import PolicyEngine
from ztmesh.policy.headers import DECISION_ID, OBLIGATIONS, PREFIX, STEP_UP, TRUST_SCORE
from ztmesh.policy.servicer import decision_to_proto, request_from_proto

DecideFn = Callable[[policy_pb2.DecideRequest, str], policy_pb2.DecideResponse]
# An audited DENY with this reason for the request, by the caller (Envoy): what a refused peer gets.
RefuseFn = Callable[[policy_pb2.DecideRequest, str, str], policy_pb2.DecideResponse]

log = logging.getLogger(__name__)
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


@dataclass(frozen=True)
class GatewayWorkloads:
    """The workloads whose mesh certificate counts as an identity at the gateway: SPIFFE IDs of the
    mesh's trust domain, listed one by one (ZTMESH_GATEWAY_WORKLOADS). The CA vouches that a
    certificate is the mesh's, not that its holder may act through the gateway."""

    trust_domain: str
    allowed: frozenset[SpiffeId]

    @classmethod
    def of(cls, trust_domain: str, ids: Iterable[str]) -> GatewayWorkloads:
        """The list from settings; ValueError naming an entry that is malformed or of another domain."""
        allowed = set()
        for value in ids:
            try:
                spiffe_id = SpiffeId.parse(value)
            except SpiffeIdError as exc:
                raise ValueError(str(exc)) from None
            if spiffe_id.trust_domain != trust_domain:
                raise ValueError(f"{value} is not of the mesh's trust domain {trust_domain}")
            allowed.add(spiffe_id)
        return cls(trust_domain, frozenset(allowed))

    def refusal(self, source: attribute_context_pb2.AttributeContext.Peer) -> str | None:
        """Why the client certificate Envoy saw does not make its holder a workload allowed through the
        gateway, naming what it presented; None when it does, or when no certificate was presented."""
        principal, uris = source.principal, _uri_sans(source.certificate)
        if not principal and uris is None:
            return None  # no client certificate: the token, or nobody, is judged
        presented = f"client certificate {_shown(principal)}"
        if uris and uris != [principal]:
            presented += f" (URI SANs {', '.join(_shown(u) for u in uris)})"
        if uris is not None and len(uris) != 1:
            return f"{presented}: a workload certificate carries exactly one SPIFFE ID, not {len(uris)} URI SANs"
        try:
            spiffe_id = SpiffeId.parse(uris[0] if uris else principal)
        except SpiffeIdError as exc:
            return f"{presented}: {exc}"
        if uris and uris[0] != principal:
            return f"{presented}: the principal is not the certificate's SPIFFE ID"
        if spiffe_id.trust_domain != self.trust_domain:
            return f"{presented}: not of the mesh's trust domain {self.trust_domain}"
        if spiffe_id not in self.allowed:
            return f"{presented}: not a workload allowed through the gateway (ZTMESH_GATEWAY_WORKLOADS)"
        return None


def _shown(value: str, limit: int = 200) -> str:
    """A presented value as the refusal quotes it: repr (no control characters), bounded."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _uri_sans(certificate: str) -> list[str] | None:
    """URI SANs of the peer certificate Envoy forwarded (URL-encoded PEM), None when there is none."""
    if not certificate:
        return None
    try:
        parsed = x509.load_pem_x509_certificate(unquote(certificate).encode())
        sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except ValueError:
        return ["<unreadable certificate>"]  # never a valid SPIFFE ID, so refused
    return [str(uri) for uri in sans.get_values_for_type(x509.UniformResourceIdentifier)]


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


def refuse_with(engine: PolicyEngine) -> RefuseFn:
    """The engine's audited refusal, over the protobuf types ext_authz works in."""

    def refuse(request: policy_pb2.DecideRequest, reason: str, caller: str) -> policy_pb2.DecideResponse:
        return decision_to_proto(engine.refuse(request_from_proto(request), reason, caller))

    return refuse


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """`envoy.service.auth.v3.Authorization` served on the policy service's port."""

    def __init__(self, decide: DecideFn, refuse: RefuseFn, workloads: GatewayWorkloads) -> None:
        self._decide = decide
        self._refuse = refuse
        self._workloads = workloads

    def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        caller = caller_id()
        incoming = dict(request.attributes.request.http.headers)
        try:
            decide_request = check_to_decide(request)
            refusal = self._workloads.refusal(request.attributes.source)
            if refusal is not None:
                # Audited with what was presented: the subject is the principal Envoy saw, as is.
                decide_request.subject.CopyFrom(policy_pb2.Subject(id=request.attributes.source.principal))
                decision = self._refuse(decide_request, refusal, caller)
            else:
                decision = self._decide(decide_request, caller)
        except Exception as exc:  # fail closed: whatever broke, the answer is DENY with the reason
            log.exception("ext_authz Check failed; answering DENY")
            decision = policy_pb2.DecideResponse(
                decision=policy_pb2.DECISION_DENY, reasons=[f"internal error: {type(exc).__name__}"]
            )
        return decide_to_check(decision, incoming)
