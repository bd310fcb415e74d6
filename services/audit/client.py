"""The audit client for emitting services (policy, keys, plugins): an `AuditSink` over gRPC/mTLS and the
durable `SpoolEmitter` built on it.

    emitter = audit_emitter(settings, "policy")   # an ztmesh.mesh.auditing.AuditEmitter
    emitter.emit(AuditEvent(service="policy", action="decide", outcome="ALLOW", ...))  # durable on return
    await emitter.emit_async(event)  # the same, from a handler on the serving loop
    ...
    emitter.close()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from ztmesh._proto.audit.v1 import audit_pb2, audit_pb2_grpc
from ztmesh.audit.errors import BatchRefused, EventRejected, SinkUnavailable, SpoolLocked
from ztmesh.audit.record import EventV1, Limits
from ztmesh.audit.servicer import EVENT_ID_METADATA, MAX_BATCH_METADATA, event_to_proto
from ztmesh.audit.settings import AuditSettings
from ztmesh.audit.spool import SpoolEmitter, SpoolSettings
from ztmesh.audit.store import AppendResult
from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.peers import PeerChannels
from ztmesh.mesh.settings import load_settings

# Refusals of an event that no retry can fix. A PERMISSION_DENIED without an event id is the mesh refusing
# this workload (a configuration problem to fix), so it is retried like UNAVAILABLE: nothing is dropped.
_PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED}
# A refusal that names no event is about the batch (too many events, too many bytes): smaller ones will do.
_BATCH_REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE}
_MAX_SLOTS = 64


class GrpcAuditSink:
    """Appends over a blocking channel; with `aio_channel` (the current asyncio channel to audit, asked for
    on the serving loop at each call) also from the loop, as an `AsyncAuditSink`."""

    def __init__(
        self, channel: grpc.Channel, timeout: float = 5.0, aio_channel: Callable[[], grpc.aio.Channel] | None = None
    ) -> None:
        self._stub = audit_pb2_grpc.AuditServiceStub(channel)
        self._timeout = timeout
        self._aio_channel = aio_channel
        self._aio_stub: tuple[grpc.aio.Channel | None, Any] = (None, None)
        if aio_channel is None:
            self.append_async = None  # type: ignore[method-assign,assignment]  # no loop path: emitters use threads

    def append(self, events: Sequence[EventV1], timeout: float | None = None) -> list[AppendResult]:
        request = audit_pb2.AppendRequest(events=[event_to_proto(e) for e in events])
        try:
            reply = self._stub.Append(request, timeout=self._timeout if timeout is None else timeout)
        except grpc.RpcError as err:
            raise _refusal(err, len(events)) from None
        return [AppendResult(r.event_id, r.sequence, r.duplicate) for r in reply.results]

    async def append_async(self, events: Sequence[EventV1], timeout: float | None = None) -> list[AppendResult]:
        assert self._aio_channel is not None
        channel = self._aio_channel()
        bound, stub = self._aio_stub
        if channel is not bound:  # a new connection after a certificate rotation
            stub = audit_pb2_grpc.AuditServiceStub(channel)
            self._aio_stub = (channel, stub)
        request = audit_pb2.AppendRequest(events=[event_to_proto(e) for e in events])
        try:
            reply = await stub.Append(request, timeout=self._timeout if timeout is None else timeout)
        except grpc.RpcError as err:
            raise _refusal(err, len(events)) from None
        return [AppendResult(r.event_id, r.sequence, r.duplicate) for r in reply.results]


def _refusal(err: grpc.RpcError, sent: int) -> Exception:
    """What a failed Append means for the spool: one event refused for good, a batch to split, or retry."""
    code = err.code()  # type: ignore[attr-defined]
    trailers = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
    event_id = str(trailers.get(EVENT_ID_METADATA, ""))
    problem = f"{code.name}: {err.details()}"  # type: ignore[attr-defined]
    limit = str(trailers.get(MAX_BATCH_METADATA, ""))
    if limit.isdigit():  # audit named how many events it takes per call
        return BatchRefused(problem, int(limit))
    if not event_id and sent > 1 and code in _BATCH_REFUSALS:  # about the batch, not one event: split it
        return BatchRefused(problem)
    if code == grpc.StatusCode.INVALID_ARGUMENT or (code in _PERMANENT and event_id):
        return EventRejected(event_id, problem)
    return SinkUnavailable(f"audit Append: {problem}")


def spool_root(settings: MeshSettings, service: str, audit: AuditSettings | None = None) -> Path:
    """The directory holding every spool slot of `service` (each process's, each replica's on a volume)."""
    audit = audit or load_settings(AuditSettings, section="audit")
    return audit.audit_spool_dir or settings.data_dir / "spool" / service


def audit_emitter(settings: MeshSettings, service: str, peers: PeerChannels | None = None) -> SpoolEmitter:
    """The durable audit emitter of `service`, shipping to the audit service at ZTMESH_AUDIT_ADDR."""
    audit = load_settings(AuditSettings, section="audit")
    channels = peers or PeerChannels(settings, service)
    sink = GrpcAuditSink(channels.channel("audit"), aio_channel=lambda: channels.aio_connection("audit"))
    limits = Limits(max_details_bytes=audit.audit_max_details_bytes)
    base = spool_root(settings, service, audit)
    # One spool per process: with ZTMESH_PROCESSES > 1 each process takes the first free slot, and a
    # restarted process takes over (and replays) the slot its predecessor held. Slots no process holds
    # (fewer processes than before a crash, a volume from a pod of another name) are drained by a live one.
    for slot in range(_MAX_SLOTS):
        spool = SpoolSettings(
            directory=base / str(slot),
            max_bytes=audit.audit_spool_max_bytes,
            when_full=audit.audit_spool_when_full,
            block_timeout=audit.audit_spool_block_timeout,
            direct_timeout=audit.audit_append_timeout,
            service=service,
            adopt=True,
        )
        try:
            return SpoolEmitter(sink, spool, limits)
        except SpoolLocked:
            continue
    raise SpoolLocked(f"{base}/0..{_MAX_SLOTS - 1}")
