"""Envoy external authorization (ext_authz v3 `Check`) on top of the policy decision.

A CheckRequest becomes a decision request (the core's model, checked by the same validation as a
Decide's, with no DecideRequest in between): the subject from the claims of a JWT that Envoy's jwt_authn
filter verified (never from an unverified header), else the SPIFFE ID of the mTLS peer Envoy saw —
which counts only as a well-formed ID of the mesh's trust domain on the gateway's workload list; any
other client certificate is refused (an audited DENY naming what was presented) before the policy;
the HTTP method as the action (a route may name its own; a query naming another method, as in
`?_method=DELETE`, is refused: the method judged must be the one that runs); the resource type and
classification from the route's `context_extensions`. ALLOW adds `x-ztmesh-decision-id` and
`x-ztmesh-trust-score` upstream, DENY is a 403 with a short JSON body, CHALLENGE a 401 naming the
step-up. Incoming `x-ztmesh-*` headers are removed so nobody can smuggle a decision upstream.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import grpc
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from ztmesh.mesh.edge import caller_id, struct_to_dict
from ztmesh.mesh.errors import SpiffeIdError
from ztmesh.mesh.spiffe import SpiffeId
from ztmesh.policy.decider import PolicyEngine
from ztmesh.policy.errors import InvalidRequest
from ztmesh.policy.headers import DECISION_ID, OBLIGATIONS, PREFIX, STEP_UP, TRUST_SCORE
from ztmesh.policy.model import (
    Assurance,
    Decision,
    DecisionRequest,
    Device,
    Fault,
    Outcome,
    Registration,
    RegistrationStatus,
    RequestContext,
    Resource,
    Subject,
)

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
# Query parameters that upstream frameworks read as the request's real method (Express's method-override,
# Laravel, Symfony, Rails on POSTs): a GET or POST judged as such would run as a DELETE.
_METHOD_OVERRIDES = frozenset({"_method"})
_ASSURANCE = {"aal1": Assurance.LOW, "aal2": Assurance.MEDIUM, "aal3": Assurance.HIGH}
# An unknown status is no standing at all, as an unspecified one over Decide.
_REGISTRATION = {
    "active": RegistrationStatus.ACTIVE,
    "suspended": RegistrationStatus.SUSPENDED,
    "expired": RegistrationStatus.EXPIRED,
}
# The device claims a token may carry, with their type: anything else there is ignored, a claim of
# the wrong type refuses the request (as Decide refuses a field it cannot read).
_DEVICE_CLAIMS: dict[str, type] = {
    "id": str, "managed": bool, "compliant": bool, "os": str, "patch_age_days": int, "disk_encrypted": bool,
    "endpoint_protection": bool,
}  # fmt: skip
_WORKLOAD = ("workload",)


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
    payloads = struct_to_dict(jwt)
    for value in payloads.values():  # one entry, named by the filter's payload_in_metadata
        if isinstance(value, dict) and value.get("sub"):
            return value
    return {}


def _subject(attributes: attribute_context_pb2.AttributeContext, claims: Mapping[str, Any]) -> Subject:
    if claims:
        registration = claims.get("registration") or {}
        amr = claims.get("amr", "")
        return Subject(
            id=str(claims["sub"]),
            roles=tuple(str(r) for r in claims.get("roles", [])),
            auth_method=",".join(str(m) for m in amr) if isinstance(amr, list) else str(amr),
            assurance=_ASSURANCE.get(str(claims.get("acr", "")).lower(), Assurance.UNSPECIFIED),
            registration=Registration(
                council=str(registration.get("council", "")),
                region=str(registration.get("region", "")),
                number=str(registration.get("number", "")),
                status=_REGISTRATION.get(str(registration.get("status", "")).lower(), RegistrationStatus.NONE),
            )
            if isinstance(registration, dict) and registration
            else None,
        )
    principal = attributes.source.principal
    if principal:
        # A workload calling through the gateway with its mesh certificate.
        return Subject(id=principal, roles=_WORKLOAD, auth_method="mtls", assurance=Assurance.HIGH)
    return Subject("")


def _device(claims: Mapping[str, Any]) -> Device | None:
    device = claims.get("device")
    if not isinstance(device, dict):
        return None
    fields: dict[str, Any] = {}
    for name, kind in _DEVICE_CLAIMS.items():
        if name not in device:
            continue
        value = device[name]
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON numbers arrive as floats from the filter's Struct
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidRequest(f"device.{name}", f"the token's device claim must be a {kind.__name__}")
        fields[name] = value
    return Device(**fields)


def check_to_request(request: external_auth_pb2.CheckRequest) -> DecisionRequest:
    """The decision request a CheckRequest asks; InvalidRequest naming a claim that cannot be read."""
    attributes = request.attributes
    http = attributes.request.http
    headers = {k.lower(): v for k, v in http.headers.items()}
    labels = dict(attributes.context_extensions)
    claims = verified_claims(attributes)
    path, _, query = http.path.partition("?")
    _refuse_method_override(query)
    return DecisionRequest(
        subject=_subject(attributes, claims),
        resource=Resource(
            type=labels.get("resource_type", ""),
            classification=labels.get("classification", ""),
            id=path,
            consented_purposes=tuple(p for p in labels.get("consented_purposes", "").split(",") if p),
        ),
        action=labels.get("action") or METHOD_ACTIONS.get(http.method.upper(), http.method.lower()),
        device=_device(claims),
        context=RequestContext(
            source_ip=attributes.source.address.socket_address.address,
            user_agent=headers.get("user-agent", ""),
            purpose=headers.get(PURPOSE_HEADER, ""),
            request_id=headers.get("x-request-id", http.id),
        ),
        attributes={"http": {"method": http.method, "path": path, "host": http.host}, "route": labels},
    )


def _refuse_method_override(query: str) -> None:
    """InvalidRequest when a query parameter names the method, however it is spelled: names are compared
    as a framework reads them - percent-decoded, in any letter case, with or without a `[]` suffix, and
    split at `;` as well as `&` (older Rack splits at both)."""
    if "%" not in query and "method" not in query.casefold():  # the common query: nothing to decode
        return
    for name, _ in parse_qsl(query.replace(";", "&"), keep_blank_values=True):
        if name.strip().casefold().split("[", 1)[0] in _METHOD_OVERRIDES:
            raise InvalidRequest(
                "request.http.path", f"the query names a method ({_shown(name, 40)}): method overrides are refused"
            )


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def decision_to_check(decision: Decision, incoming: Mapping[str, str]) -> external_auth_pb2.CheckResponse:
    forged = sorted(name for name in incoming if name.lower().startswith(PREFIX))
    if decision.outcome is Outcome.ALLOW:
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
    challenge = decision.outcome is Outcome.CHALLENGE
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

    def __init__(self, engine: PolicyEngine, workloads: GatewayWorkloads) -> None:
        self._engine = engine
        self._workloads = workloads

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        caller = caller_id()
        http = request.attributes.request.http
        try:
            problem = None
            try:
                asked = check_to_request(request)
            except InvalidRequest as exc:
                asked, problem = DecisionRequest(Subject(""), Resource("", ""), http.method), f"invalid request: {exc}"
            refusal = self._workloads.refusal(request.attributes.source)
            if refusal is not None:
                # Audited with what was presented: the subject is the principal Envoy saw, as is.
                seen = dataclasses.replace(asked, subject=Subject(request.attributes.source.principal))
                decision = await self._engine.refuse_async(seen, refusal, caller)
            elif problem is not None:
                decision = await self._engine.refuse_async(asked, problem, caller)
            else:
                decision = await self._engine.decide_async(asked, caller)
        except Exception as exc:  # fail closed: whatever broke, the answer is DENY with the reason
            log.exception("ext_authz Check failed; answering DENY")
            decision = Decision(Outcome.DENY, 0.0, (), (f"internal error: {type(exc).__name__}",), fault=Fault.INTERNAL)
        return decision_to_check(decision, http.headers)
