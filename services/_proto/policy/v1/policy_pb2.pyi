import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from ztmesh._proto.audit.v1 import audit_pb2 as _audit_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_DENY: _ClassVar[Decision]
    DECISION_CHALLENGE: _ClassVar[Decision]

class Fault(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAULT_UNSPECIFIED: _ClassVar[Fault]
    FAULT_INVALID_REQUEST: _ClassVar[Fault]
    FAULT_ENGINE_ERROR: _ClassVar[Fault]
    FAULT_ENGINE_UNAVAILABLE: _ClassVar[Fault]
    FAULT_MALFORMED_DECISION: _ClassVar[Fault]
    FAULT_SIGNAL_STORE_ERROR: _ClassVar[Fault]
    FAULT_PLUGIN_ERROR: _ClassVar[Fault]
    FAULT_AUDIT_ERROR: _ClassVar[Fault]
    FAULT_INTERNAL: _ClassVar[Fault]

class AssuranceLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSURANCE_LEVEL_UNSPECIFIED: _ClassVar[AssuranceLevel]
    ASSURANCE_LEVEL_LOW: _ClassVar[AssuranceLevel]
    ASSURANCE_LEVEL_MEDIUM: _ClassVar[AssuranceLevel]
    ASSURANCE_LEVEL_HIGH: _ClassVar[AssuranceLevel]

class RegistrationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGISTRATION_STATUS_UNSPECIFIED: _ClassVar[RegistrationStatus]
    REGISTRATION_STATUS_ACTIVE: _ClassVar[RegistrationStatus]
    REGISTRATION_STATUS_SUSPENDED: _ClassVar[RegistrationStatus]
    REGISTRATION_STATUS_EXPIRED: _ClassVar[RegistrationStatus]
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_DENY: Decision
DECISION_CHALLENGE: Decision
FAULT_UNSPECIFIED: Fault
FAULT_INVALID_REQUEST: Fault
FAULT_ENGINE_ERROR: Fault
FAULT_ENGINE_UNAVAILABLE: Fault
FAULT_MALFORMED_DECISION: Fault
FAULT_SIGNAL_STORE_ERROR: Fault
FAULT_PLUGIN_ERROR: Fault
FAULT_AUDIT_ERROR: Fault
FAULT_INTERNAL: Fault
ASSURANCE_LEVEL_UNSPECIFIED: AssuranceLevel
ASSURANCE_LEVEL_LOW: AssuranceLevel
ASSURANCE_LEVEL_MEDIUM: AssuranceLevel
ASSURANCE_LEVEL_HIGH: AssuranceLevel
REGISTRATION_STATUS_UNSPECIFIED: RegistrationStatus
REGISTRATION_STATUS_ACTIVE: RegistrationStatus
REGISTRATION_STATUS_SUSPENDED: RegistrationStatus
REGISTRATION_STATUS_EXPIRED: RegistrationStatus

class ProfessionalRegistration(_message.Message):
    __slots__ = ("council", "region", "number", "status")
    COUNCIL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    council: str
    region: str
    number: str
    status: RegistrationStatus
    def __init__(self, council: _Optional[str] = ..., region: _Optional[str] = ..., number: _Optional[str] = ..., status: _Optional[_Union[RegistrationStatus, str]] = ...) -> None: ...

class Subject(_message.Message):
    __slots__ = ("id", "roles", "auth_method", "assurance", "registration")
    ID_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    AUTH_METHOD_FIELD_NUMBER: _ClassVar[int]
    ASSURANCE_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    auth_method: str
    assurance: AssuranceLevel
    registration: ProfessionalRegistration
    def __init__(self, id: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., auth_method: _Optional[str] = ..., assurance: _Optional[_Union[AssuranceLevel, str]] = ..., registration: _Optional[_Union[ProfessionalRegistration, _Mapping]] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("id", "managed", "compliant", "os", "patch_age_days", "disk_encrypted", "endpoint_protection")
    ID_FIELD_NUMBER: _ClassVar[int]
    MANAGED_FIELD_NUMBER: _ClassVar[int]
    COMPLIANT_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    PATCH_AGE_DAYS_FIELD_NUMBER: _ClassVar[int]
    DISK_ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_PROTECTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    managed: bool
    compliant: bool
    os: str
    patch_age_days: int
    disk_encrypted: bool
    endpoint_protection: bool
    def __init__(self, id: _Optional[str] = ..., managed: _Optional[bool] = ..., compliant: _Optional[bool] = ..., os: _Optional[str] = ..., patch_age_days: _Optional[int] = ..., disk_encrypted: _Optional[bool] = ..., endpoint_protection: _Optional[bool] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("type", "id", "classification", "owner", "consented_purposes")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CONSENTED_PURPOSES_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    classification: str
    owner: str
    consented_purposes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ..., classification: _Optional[str] = ..., owner: _Optional[str] = ..., consented_purposes: _Optional[_Iterable[str]] = ...) -> None: ...

class RequestContext(_message.Message):
    __slots__ = ("source_ip", "user_agent", "time", "purpose", "request_id")
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    source_ip: str
    user_agent: str
    time: _timestamp_pb2.Timestamp
    purpose: str
    request_id: str
    def __init__(self, source_ip: _Optional[str] = ..., user_agent: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., purpose: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("subject", "device", "resource", "action", "context", "attributes")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    subject: Subject
    device: Device
    resource: Resource
    action: str
    context: RequestContext
    attributes: _struct_pb2.Struct
    def __init__(self, subject: _Optional[_Union[Subject, _Mapping]] = ..., device: _Optional[_Union[Device, _Mapping]] = ..., resource: _Optional[_Union[Resource, _Mapping]] = ..., action: _Optional[str] = ..., context: _Optional[_Union[RequestContext, _Mapping]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Factor(_message.Message):
    __slots__ = ("name", "score", "weight", "contribution", "explanation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    score: float
    weight: float
    contribution: float
    explanation: str
    def __init__(self, name: _Optional[str] = ..., score: _Optional[float] = ..., weight: _Optional[float] = ..., contribution: _Optional[float] = ..., explanation: _Optional[str] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision", "trust_score", "factors", "reasons", "obligations", "step_up", "policy_revision", "decision_id", "fault", "request_id")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    TRUST_SCORE_FIELD_NUMBER: _ClassVar[int]
    FACTORS_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    OBLIGATIONS_FIELD_NUMBER: _ClassVar[int]
    STEP_UP_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    trust_score: float
    factors: _containers.RepeatedCompositeFieldContainer[Factor]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    obligations: _containers.RepeatedScalarFieldContainer[str]
    step_up: _containers.RepeatedScalarFieldContainer[str]
    policy_revision: str
    decision_id: str
    fault: Fault
    request_id: str
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., trust_score: _Optional[float] = ..., factors: _Optional[_Iterable[_Union[Factor, _Mapping]]] = ..., reasons: _Optional[_Iterable[str]] = ..., obligations: _Optional[_Iterable[str]] = ..., step_up: _Optional[_Iterable[str]] = ..., policy_revision: _Optional[str] = ..., decision_id: _Optional[str] = ..., fault: _Optional[_Union[Fault, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class DecideBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[DecideRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[DecideRequest, _Mapping]]] = ...) -> None: ...

class DecideBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[DecideResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[DecideResponse, _Mapping]]] = ...) -> None: ...

class ReportSignalRequest(_message.Message):
    __slots__ = ("subject_id", "kind", "severity", "time", "source")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    kind: str
    severity: float
    time: _timestamp_pb2.Timestamp
    source: str
    def __init__(self, subject_id: _Optional[str] = ..., kind: _Optional[str] = ..., severity: _Optional[float] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class ReportSignalResponse(_message.Message):
    __slots__ = ("behaviour_score",)
    BEHAVIOUR_SCORE_FIELD_NUMBER: _ClassVar[int]
    behaviour_score: float
    def __init__(self, behaviour_score: _Optional[float] = ...) -> None: ...

class GetPolicyInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyInfo(_message.Message):
    __slots__ = ("engine", "revision", "packages", "loaded_time", "trust_revision", "last_error")
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PACKAGES_FIELD_NUMBER: _ClassVar[int]
    LOADED_TIME_FIELD_NUMBER: _ClassVar[int]
    TRUST_REVISION_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    engine: str
    revision: str
    packages: _containers.RepeatedScalarFieldContainer[str]
    loaded_time: _timestamp_pb2.Timestamp
    trust_revision: str
    last_error: str
    def __init__(self, engine: _Optional[str] = ..., revision: _Optional[str] = ..., packages: _Optional[_Iterable[str]] = ..., loaded_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trust_revision: _Optional[str] = ..., last_error: _Optional[str] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ("revision", "changed")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    revision: str
    changed: bool
    def __init__(self, revision: _Optional[str] = ..., changed: _Optional[bool] = ...) -> None: ...

class ProveDecisionRequest(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...
