"""AuditService over gRPC: validate, convert protobuf <-> core types, call the AuditTrail, map errors.

Who may call which RPC is decided by the mesh interceptor (app.py); here an emitter may only append
events in its own service's name, and the emitter identity recorded is the one from its certificate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from ztmesh._proto.audit.v1 import audit_pb2, audit_pb2_grpc
from ztmesh.audit import canonical, errors
from ztmesh.audit.chain import Checkpoint, CheckpointKind, Problem
from ztmesh.audit.record import (
    SCHEMA_VERSION,
    AuditRecord,
    EncodedEvents,
    EventV1,
    Limits,
    accept_events,
    checked_event,
    make_event,
)
from ztmesh.audit.store import QueryFilter
from ztmesh.audit.trail import AuditTrail
from ztmesh.mesh.edge import Edge, current_caller, timestamp_to_datetime

SERVICE = "ztmesh.audit.v1.AuditService"
EVENT_ID_METADATA = "ztmesh-event-id"  # trailing metadata naming the event a refusal is about
MAX_BATCH_METADATA = "ztmesh-max-batch"  # trailing metadata of a too-large batch: how many events fit per call
_RECORDS_PER_MESSAGE = 100
# An Append of this many events or fewer is validated on the event loop (6-10 us an event here): cheaper
# than a thread hand-off. Larger ones are validated in a thread, so other calls are not held up.
_VALIDATE_ON_LOOP = 16

_ORDERS = {audit_pb2.ORDER_UNSPECIFIED: True, audit_pb2.ORDER_NEWEST_FIRST: True, audit_pb2.ORDER_OLDEST_FIRST: False}
_PROBLEMS = {problem: getattr(audit_pb2, f"VERIFY_PROBLEM_{problem.name}", 0) for problem in Problem}
_PROBLEMS[Problem.NONE] = audit_pb2.VERIFY_PROBLEM_UNSPECIFIED
_KINDS = {CheckpointKind.HEAD: audit_pb2.CHECKPOINT_KIND_HEAD, CheckpointKind.PRUNE: audit_pb2.CHECKPOINT_KIND_PRUNE}


def _trailers(error: BaseException) -> Sequence[tuple[str, str]]:
    """What a refusal tells an emitter besides its status: the refused event, or how many fit per call."""
    trailers = []
    event_id = getattr(error, "event_id", "")
    if event_id:
        trailers.append((EVENT_ID_METADATA, str(event_id)))
    if isinstance(error, errors.BatchTooLarge):  # so an emitter can size its batches to this receiver
        trailers.append((MAX_BATCH_METADATA, str(error.limit)))
    return trailers


# Which core error becomes which status code, most specific first.
EDGE = Edge(
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
    trailers=_trailers,
)


def timestamp(text: str) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(canonical.parse_time(text))
    return stamp


def event_from_proto(message: audit_pb2.AuditEvent, limits: Limits, index: int) -> EventV1:
    if message.schema_version not in (0, SCHEMA_VERSION):
        raise errors.InvalidEvent(f"events[{index}].schema_version", f"{message.schema_version} is not 1")
    details = message.details_json or "{}"
    masked = list(message.masked_paths)
    timed = message.HasField("time")
    if timed:  # what emitters send is checked natively; make_event decides the rest
        stamp = message.time
        sure = checked_event(
            message.event_id, stamp.seconds, stamp.nanos, message.service, message.action, message.outcome,
            message.caller_spiffe_id, message.subject, message.resource, details, masked, message.decision_id,
            message.trace_id, limits,
        )  # fmt: skip
        if sure is not None:
            return sure
    at = timestamp_to_datetime(message.time, f"events[{index}].time") if timed else None
    try:
        return make_event(
            event_id=message.event_id, time=at,
            service=message.service, action=message.action, outcome=message.outcome,
            caller=message.caller_spiffe_id, subject=message.subject, resource=message.resource,
            details=details, masked=masked,
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


def events_from_request(request: audit_pb2.AppendRequest, caller: Any, limits: Limits) -> Sequence[EventV1]:
    """The events of an Append from `caller` as the trail stores them: InvalidEvent for one it refuses,
    CallerMismatch for one in another service's name. The native pass (record.accept_events) reads,
    checks and encodes the events it is sure of; the rest are read from the parsed messages
    (re-serializing the request costs ~0.3 us an event, reading a message's fields in Python ~5)."""
    account = caller.service_account if caller else None
    emitter = str(caller) if caller else ""
    accepted = accept_events(request.SerializeToString(), account, emitter, limits) if account else None
    events: list[EventV1 | None] = [None] * len(request.events) if accepted is None else accepted[0]
    for i in [i for i, event in enumerate(events) if event is None]:
        events[i] = event_from_proto(request.events[i], limits, i)
    checked: list[EventV1] = events  # type: ignore[assignment]  # every None replaced
    for event in checked:
        if event.service != account:
            raise errors.CallerMismatch(emitter, event.service, event.event_id)
    return checked if accepted is None else EncodedEvents(checked, emitter, accepted[1], accepted[2])


class AuditServicer:
    """Implements ztmesh.audit.v1.AuditService (undecodable requests are refused by the mesh interceptor)."""

    def __init__(self, trail: AuditTrail, limits: Limits) -> None:
        self.trail = trail
        self.limits = limits

    @EDGE.rpc
    async def Append(self, request: Any, context: grpc.ServicerContext) -> audit_pb2.AppendResponse:
        caller = current_caller()
        if len(request.events) > self.trail.settings.max_batch:
            raise errors.BatchTooLarge(len(request.events), self.trail.settings.max_batch)
        if len(request.events) <= _VALIDATE_ON_LOOP:
            events = events_from_request(request, caller, self.limits)
        else:  # validating hundreds of events would hold up every other call on the loop
            events = await asyncio.to_thread(events_from_request, request, caller, self.limits)
        results = await self.trail.append_async(events, str(caller) if caller else "")
        return audit_pb2.AppendResponse(
            results=[
                audit_pb2.AppendResult(event_id=r.event_id, sequence=r.sequence, duplicate=r.duplicate) for r in results
            ]  # fmt: skip
        )

    @EDGE.rpc
    def Query(self, request: Any, context: grpc.ServicerContext) -> Iterator[audit_pb2.QueryResponse]:
        if request.order not in _ORDERS:
            raise errors.InvalidQuery(f"order {request.order} is not a known Order")
        where = QueryFilter(
            start=timestamp_to_datetime(request.start_time, "start_time") if request.HasField("start_time") else None,
            end=timestamp_to_datetime(request.end_time, "end_time") if request.HasField("end_time") else None,
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

    @EDGE.rpc
    def Verify(self, request: Any, context: grpc.ServicerContext) -> audit_pb2.VerifyResponse:
        held = [("the checkpoint you hold", self.trail.open_checkpoint(n)) for n in request.witnessed_checkpoints]
        report = self.trail.verify(request.from_sequence, request.to_sequence, held)
        return audit_pb2.VerifyResponse(
            ok=report.ok, records_checked=report.records_checked, checkpoints_checked=report.checkpoints_checked,
            first_bad_sequence=report.first_bad_sequence, problem=report.detail, reason=_PROBLEMS[report.problem],
            last_sequence=max(report.head.sequence, 0), last_hash=report.head.hash,
        )  # fmt: skip

    @EDGE.rpc
    def GetCheckpoint(self, request: Any, context: grpc.ServicerContext) -> audit_pb2.Checkpoint:
        found = self.trail.checkpoint_at(request.tree_size) if request.tree_size else self.trail.latest_checkpoint()
        if found is None:
            what = (
                f"of tree size {request.tree_size}" if request.tree_size else "has been signed yet (the trail is empty)"
            )
            context.abort(grpc.StatusCode.NOT_FOUND, f"no checkpoint {what}")
        return checkpoint_to_proto(found)

    @EDGE.rpc
    def ProveInclusion(self, request: Any, context: grpc.ServicerContext) -> audit_pb2.InclusionProof:
        proof = self.trail.prove_inclusion(
            event_id=request.event_id, decision_id=request.decision_id, tree_size=request.tree_size
        )
        return audit_pb2.InclusionProof(
            checkpoint=proof.checkpoint, tree_size=proof.to_json()["tree_size"], sequence=proof.sequence,
            record=proof.record, proof=list(proof.path),
        )  # fmt: skip

    @EDGE.rpc
    def ProveConsistency(self, request: Any, context: grpc.ServicerContext) -> audit_pb2.ConsistencyProof:
        proof = self.trail.prove_consistency(request.old_size, request.new_size)
        return audit_pb2.ConsistencyProof(
            origin=proof.origin, old_size=proof.old_size, old_root=proof.old_root, new_size=proof.new_size,
            new_root=proof.new_root, proof=list(proof.path),
        )  # fmt: skip


def register(servicer: AuditServicer, server: grpc.Server) -> None:
    audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server)
