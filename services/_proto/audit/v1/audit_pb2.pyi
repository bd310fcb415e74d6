import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Order(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_UNSPECIFIED: _ClassVar[Order]
    ORDER_NEWEST_FIRST: _ClassVar[Order]
    ORDER_OLDEST_FIRST: _ClassVar[Order]

class VerifyProblem(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFY_PROBLEM_UNSPECIFIED: _ClassVar[VerifyProblem]
    VERIFY_PROBLEM_HASH_MISMATCH: _ClassVar[VerifyProblem]
    VERIFY_PROBLEM_PREV_HASH_MISMATCH: _ClassVar[VerifyProblem]
    VERIFY_PROBLEM_GAP: _ClassVar[VerifyProblem]
    VERIFY_PROBLEM_REORDERED: _ClassVar[VerifyProblem]
    VERIFY_PROBLEM_DUPLICATE: _ClassVar[VerifyProblem]
    VERIFY_PROBLEM_CHECKPOINT_SIGNATURE: _ClassVar[VerifyProblem]
    VERIFY_PROBLEM_CHECKPOINT_MISMATCH: _ClassVar[VerifyProblem]
    VERIFY_PROBLEM_TRUNCATED: _ClassVar[VerifyProblem]
    VERIFY_PROBLEM_ANCHOR: _ClassVar[VerifyProblem]
    VERIFY_PROBLEM_TREE_MISMATCH: _ClassVar[VerifyProblem]

class CheckpointKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECKPOINT_KIND_UNSPECIFIED: _ClassVar[CheckpointKind]
    CHECKPOINT_KIND_HEAD: _ClassVar[CheckpointKind]
    CHECKPOINT_KIND_PRUNE: _ClassVar[CheckpointKind]
ORDER_UNSPECIFIED: Order
ORDER_NEWEST_FIRST: Order
ORDER_OLDEST_FIRST: Order
VERIFY_PROBLEM_UNSPECIFIED: VerifyProblem
VERIFY_PROBLEM_HASH_MISMATCH: VerifyProblem
VERIFY_PROBLEM_PREV_HASH_MISMATCH: VerifyProblem
VERIFY_PROBLEM_GAP: VerifyProblem
VERIFY_PROBLEM_REORDERED: VerifyProblem
VERIFY_PROBLEM_DUPLICATE: VerifyProblem
VERIFY_PROBLEM_CHECKPOINT_SIGNATURE: VerifyProblem
VERIFY_PROBLEM_CHECKPOINT_MISMATCH: VerifyProblem
VERIFY_PROBLEM_TRUNCATED: VerifyProblem
VERIFY_PROBLEM_ANCHOR: VerifyProblem
VERIFY_PROBLEM_TREE_MISMATCH: VerifyProblem
CHECKPOINT_KIND_UNSPECIFIED: CheckpointKind
CHECKPOINT_KIND_HEAD: CheckpointKind
CHECKPOINT_KIND_PRUNE: CheckpointKind

class AuditEvent(_message.Message):
    __slots__ = ("event_id", "time", "service", "caller_spiffe_id", "subject", "action", "resource", "outcome", "details_json", "decision_id", "trace_id", "schema_version", "masked_paths")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CALLER_SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MASKED_PATHS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    time: _timestamp_pb2.Timestamp
    service: str
    caller_spiffe_id: str
    subject: str
    action: str
    resource: str
    outcome: str
    details_json: str
    decision_id: str
    trace_id: str
    schema_version: int
    masked_paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, event_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., service: _Optional[str] = ..., caller_spiffe_id: _Optional[str] = ..., subject: _Optional[str] = ..., action: _Optional[str] = ..., resource: _Optional[str] = ..., outcome: _Optional[str] = ..., details_json: _Optional[str] = ..., decision_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., schema_version: _Optional[int] = ..., masked_paths: _Optional[_Iterable[str]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("event", "sequence", "prev_hash", "hash", "recorded_at", "emitter_spiffe_id")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    EMITTER_SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    event: AuditEvent
    sequence: int
    prev_hash: bytes
    hash: bytes
    recorded_at: _timestamp_pb2.Timestamp
    emitter_spiffe_id: str
    def __init__(self, event: _Optional[_Union[AuditEvent, _Mapping]] = ..., sequence: _Optional[int] = ..., prev_hash: _Optional[bytes] = ..., hash: _Optional[bytes] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., emitter_spiffe_id: _Optional[str] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ...) -> None: ...

class AppendResult(_message.Message):
    __slots__ = ("event_id", "sequence", "duplicate")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    sequence: int
    duplicate: bool
    def __init__(self, event_id: _Optional[str] = ..., sequence: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AppendResult]
    def __init__(self, results: _Optional[_Iterable[_Union[AppendResult, _Mapping]]] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "service", "subject", "action", "outcome", "order", "page_size", "page_token", "decision_id")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    service: str
    subject: str
    action: str
    outcome: str
    order: Order
    page_size: int
    page_token: str
    decision_id: str
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., service: _Optional[str] = ..., subject: _Optional[str] = ..., action: _Optional[str] = ..., outcome: _Optional[str] = ..., order: _Optional[_Union[Order, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., decision_id: _Optional[str] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("from_sequence", "to_sequence", "witnessed_checkpoints")
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TO_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    WITNESSED_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    from_sequence: int
    to_sequence: int
    witnessed_checkpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, from_sequence: _Optional[int] = ..., to_sequence: _Optional[int] = ..., witnessed_checkpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("ok", "records_checked", "checkpoints_checked", "first_bad_sequence", "problem", "reason", "last_sequence", "last_hash")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_HASH_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records_checked: int
    checkpoints_checked: int
    first_bad_sequence: int
    problem: str
    reason: VerifyProblem
    last_sequence: int
    last_hash: bytes
    def __init__(self, ok: _Optional[bool] = ..., records_checked: _Optional[int] = ..., checkpoints_checked: _Optional[int] = ..., first_bad_sequence: _Optional[int] = ..., problem: _Optional[str] = ..., reason: _Optional[_Union[VerifyProblem, str]] = ..., last_sequence: _Optional[int] = ..., last_hash: _Optional[bytes] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("tree_size",)
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    tree_size: int
    def __init__(self, tree_size: _Optional[int] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("sequence", "head_hash", "time", "pruned_through_sequence", "key_id", "key_version", "signature", "signed_payload", "kind", "pruned_through_hash", "pruned_before", "algorithm", "checkpoint_id", "note", "tree_root")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PRUNED_THROUGH_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRUNED_THROUGH_HASH_FIELD_NUMBER: _ClassVar[int]
    PRUNED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    TREE_ROOT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    head_hash: bytes
    time: _timestamp_pb2.Timestamp
    pruned_through_sequence: int
    key_id: str
    key_version: int
    signature: bytes
    signed_payload: bytes
    kind: CheckpointKind
    pruned_through_hash: bytes
    pruned_before: _timestamp_pb2.Timestamp
    algorithm: str
    checkpoint_id: str
    note: str
    tree_root: bytes
    def __init__(self, sequence: _Optional[int] = ..., head_hash: _Optional[bytes] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pruned_through_sequence: _Optional[int] = ..., key_id: _Optional[str] = ..., key_version: _Optional[int] = ..., signature: _Optional[bytes] = ..., signed_payload: _Optional[bytes] = ..., kind: _Optional[_Union[CheckpointKind, str]] = ..., pruned_through_hash: _Optional[bytes] = ..., pruned_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., algorithm: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., note: _Optional[str] = ..., tree_root: _Optional[bytes] = ...) -> None: ...

class ProveInclusionRequest(_message.Message):
    __slots__ = ("event_id", "decision_id", "tree_size")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    decision_id: str
    tree_size: int
    def __init__(self, event_id: _Optional[str] = ..., decision_id: _Optional[str] = ..., tree_size: _Optional[int] = ...) -> None: ...

class InclusionProof(_message.Message):
    __slots__ = ("checkpoint", "tree_size", "sequence", "record", "proof")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    tree_size: int
    sequence: int
    record: bytes
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, checkpoint: _Optional[str] = ..., tree_size: _Optional[int] = ..., sequence: _Optional[int] = ..., record: _Optional[bytes] = ..., proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ProveConsistencyRequest(_message.Message):
    __slots__ = ("old_size", "new_size")
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEW_SIZE_FIELD_NUMBER: _ClassVar[int]
    old_size: int
    new_size: int
    def __init__(self, old_size: _Optional[int] = ..., new_size: _Optional[int] = ...) -> None: ...

class ConsistencyProof(_message.Message):
    __slots__ = ("origin", "old_size", "old_root", "new_size", "new_root", "proof")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    OLD_ROOT_FIELD_NUMBER: _ClassVar[int]
    NEW_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEW_ROOT_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    origin: str
    old_size: int
    old_root: bytes
    new_size: int
    new_root: bytes
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, origin: _Optional[str] = ..., old_size: _Optional[int] = ..., old_root: _Optional[bytes] = ..., new_size: _Optional[int] = ..., new_root: _Optional[bytes] = ..., proof: _Optional[_Iterable[bytes]] = ...) -> None: ...
