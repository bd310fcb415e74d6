"""AuditService over gRPC: validate, convert protobuf <-> core types, call the AuditTrail, map errors.

Who may call which RPC is decided by the mesh interceptor (app.py); here an emitter may only append
events in its own service's name, and the emitter identity recorded is the one from its certificate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import timestamp_pb2

from ztmesh._proto.audit.v1 import audit_pb2
from ztmesh.audit import canonical, errors
from ztmesh.audit.chain import Checkpoint, CheckpointKind, Problem
from ztmesh.audit.record import SCHEMA_VERSION, AuditRecord, EventV1, Limits, make_event
from ztmesh.audit.store import QueryFilter
from ztmesh.audit.trail import AuditTrail
from ztmesh.mesh.interceptors import current_caller

SERVICE = "ztmesh.audit.v1.AuditService"
EVENT_ID_METADATA = "ztmesh-event-id"  # trailing metadata naming the event a refusal is about
MAX_BATCH_METADATA = "ztmesh-max-batch"  # trailing metadata of a too-large batch: how many events fit per call
_RECORDS_PER_MESSAGE = 100

# One place decides which core error becomes which status code.
_STATUS: list[tuple[type[Exception], grpc.StatusCode]] = [
    (errors.CallerMismatch, grpc.StatusCode.PERMISSION_DENIED),
    (errors.InvalidEvent, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.BatchTooLarge, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.DuplicateInBatch, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidQuery, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidRange, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.RecordNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.PruneRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.AppendOnlyViolation, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.StoreError, grpc.StatusCode.UNAVAILABLE),
    (errors.CheckpointError, grpc.StatusCode.UNAVAILABLE),
    (errors.AuditError, grpc.StatusCode.INTERNAL),
]
_ORDERS = {audit_pb2.ORDER_UNSPECIFIED: True, audit_pb2.ORDER_NEWEST_FIRST: True, audit_pb2.ORDER_OLDEST_FIRST: False}
_PROBLEMS = {problem: getattr(audit_pb2, f"VERIFY_PROBLEM_{problem.name}", 0) for problem in Problem}
_PROBLEMS[Problem.NONE] = audit_pb2.VERIFY_PROBLEM_UNSPECIFIED
_KINDS = {CheckpointKind.HEAD: audit_pb2.CHECKPOINT_KIND_HEAD, CheckpointKind.PRUNE: audit_pb2.CHECKPOINT_KIND_PRUNE}


class Undecodable:
    """What the request deserializer yields for bytes that are not the expected message (e.g. a string
    field holding invalid UTF-8): the RPC then answers INVALID_ARGUMENT instead of a bare INTERNAL."""

    def __init__(self, message_type: str, problem: str) -> None:
        self.problem = f"request is not a valid {message_type}: {problem}"


def lenient_deserializer(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except protobuf_message.DecodeError as exc:
            return Undecodable(cls.DESCRIPTOR.full_name, str(exc).rsplit(": ", 1)[-1])

    return parse


@contextmanager
def _status(context: grpc.ServicerContext) -> Iterator[None]:
    try:
        yield
    except errors.AuditError as exc:
        code = next(code for kind, code in _STATUS if isinstance(exc, kind))
        event_id = getattr(exc, "event_id", "")
        if event_id:
            context.set_trailing_metadata(((EVENT_ID_METADATA, event_id),))
        if isinstance(exc, errors.BatchTooLarge):  # so an emitter can size its batches to this receiver
            context.set_trailing_metadata(((MAX_BATCH_METADATA, str(exc.limit)),))
        context.abort(code, str(exc))


def _check_decoded(request: Any, context: grpc.ServicerContext) -> None:
    if isinstance(request, Undecodable):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.problem)


def timestamp(text: str) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(canonical.parse_time(text))
    return stamp


def _datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def event_from_proto(message: audit_pb2.AuditEvent, limits: Limits, index: int) -> EventV1:
    if message.schema_version not in (0, SCHEMA_VERSION):
        raise errors.InvalidEvent(f"events[{index}].schema_version", f"{message.schema_version} is not 1")
    try:
        return make_event(
            event_id=message.event_id, time=_datetime(message.time) if message.HasField("time") else None,
            service=message.service, action=message.action, outcome=message.outcome,
            caller=message.caller_spiffe_id, subject=message.subject, resource=message.resource,
            details=message.details_json or "{}", masked=list(message.masked_paths),
            decision_id=message.decision_id, trace_id=message.trace_id, limits=limits,
        )  # fmt: skip
    except errors.InvalidEvent as exc:
        raise errors.InvalidEvent(f"events[{index}].{exc.field}", exc.problem, exc.event_id) from None


def event_to_proto(event: EventV1) -> audit_pb2.AuditEvent:
    return audit_pb2.AuditEvent(
        event_id=event.event_id, time=timestamp(event.time), service=event.service,
        caller_spiffe_id=event.caller, subject=event.subject, action=event.action, resource=event.resource,
        outcome=event.outcome, details_json=event.details, decision_id=event.decision_id,
        trace_id=event.trace_id, schema_version=SCHEMA_VERSION, masked_paths=list(event.masked),
    )  # fmt: skip


def record_to_proto(record: AuditRecord) -> audit_pb2.AuditRecord:
    return audit_pb2.AuditRecord(
        event=event_to_proto(record.event), sequence=record.sequence, prev_hash=record.prev_hash,
        hash=record.hash, recorded_at=timestamp(record.recorded_at), emitter_spiffe_id=record.emitter,
    )  # fmt: skip


def checkpoint_to_proto(cp: Checkpoint) -> audit_pb2.Checkpoint:
    message = audit_pb2.Checkpoint(
        sequence=cp.sequence, head_hash=cp.head_hash, time=timestamp(cp.time),
        pruned_through_sequence=cp.pruned_through_sequence, key_id=cp.key_id, key_version=cp.key_version,
        signature=cp.signature, signed_payload=cp.payload(), kind=_KINDS[cp.kind],
        pruned_through_hash=cp.pruned_through_hash, algorithm=cp.algorithm, checkpoint_id=cp.checkpoint_id,
        note=cp.note, tree_root=cp.tree_root,
    )  # fmt: skip
    if cp.pruned_before:
        message.pruned_before.CopyFrom(timestamp(cp.pruned_before))
    return message


class AuditServicer:
    """Implements ztmesh.audit.v1.AuditService (registered by `register`, with lenient deserializers)."""

    def __init__(self, trail: AuditTrail, limits: Limits) -> None:
        self.trail = trail
        self.limits = limits

    def Append(self, request: Any, context: grpc.ServicerContext) -> audit_pb2.AppendResponse:
        _check_decoded(request, context)
        caller = current_caller()
        with _status(context):
            if len(request.events) > self.trail.settings.max_batch:
                raise errors.BatchTooLarge(len(request.events), self.trail.settings.max_batch)
            events = [event_from_proto(m, self.limits, i) for i, m in enumerate(request.events)]
            account = caller.service_account if caller else None
            for event in events:
                if event.service != account:
                    raise errors.CallerMismatch(str(caller or ""), event.service, event.event_id)
            results = self.trail.append(events, str(caller) if caller else "")
        return audit_pb2.AppendResponse(
            results=[
                audit_pb2.AppendResult(event_id=r.event_id, sequence=r.sequence, duplicate=r.duplicate) for r in results
            ]  # fmt: skip
        )

    def Query(self, request: Any, context: grpc.ServicerContext) -> Iterator[audit_pb2.QueryResponse]:
        _check_decoded(request, context)
        with _status(context):
            if request.order not in _ORDERS:
                raise errors.InvalidQuery(f"order {request.order} is not a known Order")
            where = QueryFilter(
                start=_datetime(request.start_time) if request.HasField("start_time") else None,
                end=_datetime(request.end_time) if request.HasField("end_time") else None,
                service=request.service, subject=request.subject, action=request.action, outcome=request.outcome,
                decision_id=request.decision_id, newest_first=_ORDERS[request.order],
            )  # fmt: skip
            page = self.trail.query(where, request.page_token, request.page_size)
        records = [record_to_proto(r) for r in page.records]
        for start in range(0, max(len(records), 1), _RECORDS_PER_MESSAGE):
            last = start + _RECORDS_PER_MESSAGE >= len(records)
            yield audit_pb2.QueryResponse(
                records=records[start : start + _RECORDS_PER_MESSAGE], next_page_token=page.next_token if last else ""
            )

    def Verify(self, request: Any, context: grpc.ServicerContext) -> audit_pb2.VerifyResponse:
        _check_decoded(request, context)
        with _status(context):
            report = self.trail.verify(request.from_sequence, request.to_sequence)
        return audit_pb2.VerifyResponse(
            ok=report.ok, records_checked=report.records_checked, checkpoints_checked=report.checkpoints_checked,
            first_bad_sequence=report.first_bad_sequence, problem=report.detail, reason=_PROBLEMS[report.problem],
            last_sequence=max(report.head.sequence, 0), last_hash=report.head.hash,
        )  # fmt: skip

    def GetCheckpoint(self, request: Any, context: grpc.ServicerContext) -> audit_pb2.Checkpoint:
        _check_decoded(request, context)
        with _status(context):
            found = self.trail.checkpoint_at(request.tree_size) if request.tree_size else self.trail.latest_checkpoint()
        if found is None:
            what = (
                f"of tree size {request.tree_size}" if request.tree_size else "has been signed yet (the trail is empty)"
            )
            context.abort(grpc.StatusCode.NOT_FOUND, f"no checkpoint {what}")
        return checkpoint_to_proto(found)

    def ProveInclusion(self, request: Any, context: grpc.ServicerContext) -> audit_pb2.InclusionProof:
        _check_decoded(request, context)
        with _status(context):
            proof = self.trail.prove_inclusion(
                event_id=request.event_id, decision_id=request.decision_id, tree_size=request.tree_size
            )
        return audit_pb2.InclusionProof(
            checkpoint=proof.checkpoint, tree_size=proof.to_json()["tree_size"], sequence=proof.sequence,
            record=proof.record, proof=list(proof.path),
        )  # fmt: skip

    def ProveConsistency(self, request: Any, context: grpc.ServicerContext) -> audit_pb2.ConsistencyProof:
        _check_decoded(request, context)
        with _status(context):
            proof = self.trail.prove_consistency(request.old_size, request.new_size)
        return audit_pb2.ConsistencyProof(
            origin=proof.origin, old_size=proof.old_size, old_root=proof.old_root, new_size=proof.new_size,
            new_root=proof.new_root, proof=list(proof.path),
        )  # fmt: skip


def register(servicer: AuditServicer, server: grpc.Server) -> None:
    """Add the service with deserializers that turn undecodable requests into INVALID_ARGUMENT."""

    def unary(fn: Callable[..., Any], request_cls: Any, response_cls: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=lenient_deserializer(request_cls),
            response_serializer=response_cls.SerializeToString,
        )

    handlers = {
        "Append": unary(servicer.Append, audit_pb2.AppendRequest, audit_pb2.AppendResponse),
        "Query": grpc.unary_stream_rpc_method_handler(
            servicer.Query,
            request_deserializer=lenient_deserializer(audit_pb2.QueryRequest),
            response_serializer=audit_pb2.QueryResponse.SerializeToString,
        ),  # fmt: skip
        "Verify": unary(servicer.Verify, audit_pb2.VerifyRequest, audit_pb2.VerifyResponse),
        "GetCheckpoint": unary(servicer.GetCheckpoint, audit_pb2.GetCheckpointRequest, audit_pb2.Checkpoint),
        "ProveInclusion": unary(servicer.ProveInclusion, audit_pb2.ProveInclusionRequest, audit_pb2.InclusionProof),
        "ProveConsistency": unary(
            servicer.ProveConsistency, audit_pb2.ProveConsistencyRequest, audit_pb2.ConsistencyProof
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
