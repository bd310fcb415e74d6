"""Core types of the policy decision point: what a decision request carries (subject, device,
resource, action, context) and what a decision answers (outcome, trust score and its factors,
reasons, obligations, step-up), plus a strict reader for the JSON form used by files and the CLI."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ztmesh.policy.errors import InvalidRequest


class Assurance(enum.Enum):
    """Authentication assurance of the subject's session (NIST SP 800-63 AAL)."""

    UNSPECIFIED = "unspecified"
    LOW = "low"  # AAL1: single factor
    MEDIUM = "medium"  # AAL2: multi-factor
    HIGH = "high"  # AAL3: hardware-bound multi-factor


class RegistrationStatus(enum.Enum):
    """Standing of a professional council registration (CRM, COREN...)."""

    NONE = "none"  # no registration presented
    ACTIVE = "active"
    SUSPENDED = "suspended"
    EXPIRED = "expired"


class Outcome(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    CHALLENGE = "challenge"  # step-up required (Decision.step_up)


class Fault(enum.Enum):
    """Why a decision was made without (or despite) the policy: NONE for a normal decision.

    Every fault other than NONE comes with outcome DENY (fail closed)."""

    NONE = "none"
    INVALID_REQUEST = "invalid_request"
    ENGINE_ERROR = "engine_error"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    MALFORMED_DECISION = "malformed_decision"
    SIGNAL_STORE_ERROR = "signal_store_error"
    PLUGIN_ERROR = "plugin_error"
    AUDIT_ERROR = "audit_error"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Registration:
    """A professional council registration, e.g. CRM/SP 123456 for a physician in São Paulo."""

    council: str  # CRM, CRO, COREN, CRF...
    region: str = ""  # state (UF)
    number: str = ""
    status: RegistrationStatus = RegistrationStatus.NONE


@dataclass(frozen=True, slots=True)
class Subject:
    id: str
    roles: tuple[str, ...] = ()
    auth_method: str = ""  # comma-separated when several: "pwd,otp"
    assurance: Assurance = Assurance.UNSPECIFIED
    registration: Registration | None = None


@dataclass(frozen=True, slots=True)
class Device:
    id: str = ""
    managed: bool = False
    compliant: bool = False
    os: str = ""
    patch_age_days: int | None = None  # None: unknown
    disk_encrypted: bool = False
    endpoint_protection: bool = False


@dataclass(frozen=True, slots=True)
class Resource:
    type: str
    classification: str
    id: str = ""
    owner: str = ""
    # Processing purposes the data subject consented to (LGPD art. 7/11), as the record holder knows them.
    consented_purposes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestContext:
    source_ip: str = ""
    user_agent: str = ""
    time: datetime | None = None  # when the enforcement point saw the request; None = now
    purpose: str = ""  # LGPD processing purpose: treatment, research, billing...
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """May this subject, on this device, from this context, perform this action on this resource?"""

    subject: Subject
    resource: Resource
    action: str
    device: Device | None = None  # None: the enforcement point knows nothing of the device
    context: RequestContext = RequestContext()
    attributes: Mapping[str, Any] = field(default_factory=dict)  # free-form, input.attributes in Rego


@dataclass(frozen=True, slots=True)
class Factor:
    """One factor of the trust score: its 0-1 score, its weight and the points it contributed."""

    name: str
    score: float
    weight: float
    contribution: float  # points of the 0-100 trust score
    explanation: str


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    trust_score: float
    factors: tuple[Factor, ...]
    reasons: tuple[str, ...]
    obligations: tuple[str, ...] = ()
    step_up: tuple[str, ...] = ()
    policy_revision: str = ""
    decision_id: str = ""
    request_id: str = ""
    fault: Fault = Fault.NONE
    cached: bool = False  # the policy's answer came from the decision cache

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "trust_score": self.trust_score,
            "factors": [
                {"name": f.name, "score": f.score, "weight": f.weight, "contribution": f.contribution,
                 "explanation": f.explanation}
                for f in self.factors
            ],
            "reasons": list(self.reasons),
            "obligations": list(self.obligations),
            "step_up": list(self.step_up),
            "policy_revision": self.policy_revision,
            "decision_id": self.decision_id,
            "request_id": self.request_id,
            "fault": self.fault.value,
            "cached": self.cached,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Signal:
    """A behaviour event about a subject that lowers its trust for a while (see policies/trust/)."""

    subject_id: str
    kind: str  # failed_login, anomaly, impossible_travel...
    severity: float = 1.0  # 0-1 multiplier of the kind's weight
    time: datetime | None = None  # None = now
    source: str = ""


# --- JSON form -----------------------------------------------------------------------------------


class _Reader:
    """Reads one JSON object with a field path for error messages; unknown keys are errors."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            raise InvalidRequest(path or "request", f"expected an object, got {type(value).__name__}")
        self.value = value
        self.path = path
        self.seen: set[str] = set()

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.seen.add(key)
        raw = self.value.get(key, default)
        if raw is None:
            return default
        if isinstance(raw, bool) and kind in (int, float, (int, float)):
            raise InvalidRequest(self._at(key), f"expected a number, got {raw!r}")
        if not isinstance(raw, kind):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise InvalidRequest(self._at(key), f"expected {expected}, got {type(raw).__name__}")
        return raw

    def strings(self, key: str) -> tuple[str, ...]:
        items = self.get(key, list, [])
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise InvalidRequest(f"{self._at(key)}[{i}]", f"expected a string, got {type(item).__name__}")
        return tuple(items)

    def enum(self, key: str, kind: type[enum.Enum], default: enum.Enum) -> Any:
        raw = self.get(key, str, default.value)
        try:
            return kind(raw.lower())
        except ValueError:
            choices = ", ".join(m.value for m in kind)  # type: ignore[attr-defined]
            raise InvalidRequest(self._at(key), f"unknown value {raw!r}; expected one of {choices}") from None

    def child(self, key: str) -> _Reader | None:
        self.seen.add(key)
        raw = self.value.get(key)
        return None if raw is None else _Reader(raw, self._at(key))

    def done(self) -> None:
        unknown = sorted(set(self.value) - self.seen)
        if unknown:
            raise InvalidRequest(self._at(unknown[0]), "unknown field")


def parse_time(raw: str, path: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(path, f"not an RFC 3339 time: {raw!r}") from None
    if parsed.tzinfo is None:
        raise InvalidRequest(path, f"time {raw!r} has no UTC offset")
    return parsed.astimezone(UTC)


def request_from_mapping(value: Any) -> DecisionRequest:
    """A DecisionRequest from its JSON form (the field names of the dataclasses; enums as strings)."""
    top = _Reader(value, "")
    s = top.child("subject")
    if s is None:
        raise InvalidRequest("subject", "is required")
    registration = None
    r = s.child("registration")
    if r is not None:
        registration = Registration(
            council=r.get("council", str, ""),
            region=r.get("region", str, ""),
            number=r.get("number", str, ""),
            status=r.enum("status", RegistrationStatus, RegistrationStatus.NONE),
        )
        r.done()
    subject = Subject(
        id=s.get("id", str, ""),
        roles=s.strings("roles"),
        auth_method=s.get("auth_method", str, ""),
        assurance=s.enum("assurance", Assurance, Assurance.UNSPECIFIED),
        registration=registration,
    )
    s.done()
    device = None
    d = top.child("device")
    if d is not None:
        age = d.get("patch_age_days", int)
        device = Device(
            id=d.get("id", str, ""),
            managed=d.get("managed", bool, False),
            compliant=d.get("compliant", bool, False),
            os=d.get("os", str, ""),
            patch_age_days=age,
            disk_encrypted=d.get("disk_encrypted", bool, False),
            endpoint_protection=d.get("endpoint_protection", bool, False),
        )
        d.done()
    res = top.child("resource")
    if res is None:
        raise InvalidRequest("resource", "is required")
    resource = Resource(
        type=res.get("type", str, ""),
        classification=res.get("classification", str, ""),
        id=res.get("id", str, ""),
        owner=res.get("owner", str, ""),
        consented_purposes=res.strings("consented_purposes"),
    )
    res.done()
    context = RequestContext()
    c = top.child("context")
    if c is not None:
        raw_time = c.get("time", str)
        context = RequestContext(
            source_ip=c.get("source_ip", str, ""),
            user_agent=c.get("user_agent", str, ""),
            time=parse_time(raw_time, "context.time") if raw_time else None,
            purpose=c.get("purpose", str, ""),
            request_id=c.get("request_id", str, ""),
        )
        c.done()
    request = DecisionRequest(
        subject=subject,
        resource=resource,
        action=top.get("action", str, ""),
        device=device,
        context=context,
        attributes=dict(top.get("attributes", dict, {})),
    )
    top.done()
    return request


def signal_from_mapping(value: Any) -> Signal:
    top = _Reader(value, "")
    raw_time = top.get("time", str)
    signal = Signal(
        subject_id=top.get("subject_id", str, ""),
        kind=top.get("kind", str, ""),
        severity=float(top.get("severity", (int, float), 1.0)),
        time=parse_time(raw_time, "time") if raw_time else None,
        source=top.get("source", str, ""),
    )
    top.done()
    return signal
