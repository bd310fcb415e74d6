"""The Rego input document: the request normalised (every field present, enums as strings) plus the
trust result, so that a policy never meets an undefined field it did not expect.

Rego sees the local hour and weekday rather than the request's timestamp and request id: those
change on every request and would make every decision unique to the cache; the audit record keeps
them. Probes are sample inputs every new bundle must answer with a well-shaped decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ztmesh.policy.model import (
    Assurance,
    DecisionRequest,
    Device,
    Registration,
    RegistrationStatus,
    RequestContext,
    Resource,
    Subject,
)
from ztmesh.policy.trust import TrustResult

_NO_REGISTRATION = Registration(council="", status=RegistrationStatus.NONE)
_NO_DEVICE = Device()


def rego_input(
    request: DecisionRequest, trust: TrustResult, plugins: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    subject = request.subject
    reg = subject.registration or _NO_REGISTRATION
    device = request.device or _NO_DEVICE
    resource = request.resource
    ctx = request.context
    document: dict[str, Any] = {
        "subject": {
            "id": subject.id,
            "roles": list(subject.roles),
            "auth_method": subject.auth_method,
            "assurance": subject.assurance.value,
            "registration": {"council": reg.council, "region": reg.region, "number": reg.number,
                             "status": reg.status.value},
        },
        "device": {
            "present": request.device is not None,
            "id": device.id,
            "managed": device.managed,
            "compliant": device.compliant,
            "os": device.os,
            "patch_age_days": device.patch_age_days,
            "disk_encrypted": device.disk_encrypted,
            "endpoint_protection": device.endpoint_protection,
        },
        "resource": {
            "type": resource.type,
            "id": resource.id,
            "classification": resource.classification,
            "owner": resource.owner,
            "consented_purposes": list(resource.consented_purposes),
        },
        "action": request.action,
        "context": {
            "source_ip": ctx.source_ip,
            "user_agent": ctx.user_agent,
            "purpose": ctx.purpose,
            "local_hour": trust.local_hour,
            "weekday": trust.weekday,
        },
        "attributes": dict(request.attributes),
        "trust": {
            "score": trust.score,
            "factors": {f.name: f.score for f in trust.factors},
            "flags": list(trust.flags),
        },
    }  # fmt: skip
    if plugins is not None:
        document["plugins"] = dict(plugins)
    return document


def probe_inputs() -> dict[str, dict[str, Any]]:
    """Inputs spanning outcomes and classifications (known to the default pack or not), each of which
    a bundle must answer with a well-shaped decision before it may serve."""
    probes = {}
    for classification in ("public", "internal", "patient_data", "critical_patient_data", "unlisted_classification"):
        for action, score in (("read", 95.0), ("write", 79.5), ("prescribe", 50.0), ("read", 0.0)):
            request = DecisionRequest(
                subject=Subject(
                    "probe", ("physician",), "otp", Assurance.MEDIUM,
                    Registration("CRM", "SP", "1", RegistrationStatus.ACTIVE),
                ),
                resource=Resource("probe_record", classification, "probe-1", "probe", ("treatment",)),
                action=action,
                device=Device("probe-device", True, True, "linux", 1, True, True),
                context=RequestContext("10.0.0.1", "probe/1.0", None, "treatment", "probe"),
            )  # fmt: skip
            trust = TrustResult(score, (), (), 10, 2)
            probes[f"{classification}/{action}/{score:g}"] = rego_input(request, trust)
    return probes
