"""PolicyService over gRPC: convert protobuf <-> core types, call the PolicyEngine, map errors.

Decide answers INVALID_ARGUMENT for a malformed request (the decision, a DENY, is audited all the
same); every other failure is already a DENY with its reason and fault, made by the core.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from ztmesh._proto.audit.v1 import audit_pb2
from ztmesh._proto.policy.v1 import policy_pb2, policy_pb2_grpc
from ztmesh.mesh.edge import Edge, caller_id, struct_to_dict, timestamp_to_datetime
from ztmesh.mesh.errors import InvalidField
from ztmesh.policy import headers
from ztmesh.policy.decider import PolicyEngine
from ztmesh.policy.decision_proofs import DecisionNotFound, DecisionProofs, ProofUnavailable
from ztmesh.policy.errors import (
    BundleError,
    EngineError,
    InvalidRequest,
    NotAReporter,
    ReporterRateLimited,
    SignalStoreError,
    SignalStoreFull,
)
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
    Signal,
    Subject,
)

_ASSURANCE = {
    policy_pb2.ASSURANCE_LEVEL_UNSPECIFIED: Assurance.UNSPECIFIED,
    policy_pb2.ASSURANCE_LEVEL_LOW: Assurance.LOW,
    policy_pb2.ASSURANCE_LEVEL_MEDIUM: Assurance.MEDIUM,
    policy_pb2.ASSURANCE_LEVEL_HIGH: Assurance.HIGH,
}
# An unspecified status is no standing at all: only an explicit ACTIVE licenses clinical acts.
_STATUS = {
    policy_pb2.REGISTRATION_STATUS_UNSPECIFIED: RegistrationStatus.NONE,
    policy_pb2.REGISTRATION_STATUS_ACTIVE: RegistrationStatus.ACTIVE,
    policy_pb2.REGISTRATION_STATUS_SUSPENDED: RegistrationStatus.SUSPENDED,
    policy_pb2.REGISTRATION_STATUS_EXPIRED: RegistrationStatus.EXPIRED,
}
_OUTCOME = {
    Outcome.ALLOW: policy_pb2.DECISION_ALLOW,
    Outcome.DENY: policy_pb2.DECISION_DENY,
    Outcome.CHALLENGE: policy_pb2.DECISION_CHALLENGE,
}
_FAULT = {
    Fault.NONE: policy_pb2.FAULT_UNSPECIFIED,
    Fault.INVALID_REQUEST: policy_pb2.FAULT_INVALID_REQUEST,
    Fault.ENGINE_ERROR: policy_pb2.FAULT_ENGINE_ERROR,
    Fault.ENGINE_UNAVAILABLE: policy_pb2.FAULT_ENGINE_UNAVAILABLE,
    Fault.MALFORMED_DECISION: policy_pb2.FAULT_MALFORMED_DECISION,
    Fault.SIGNAL_STORE_ERROR: policy_pb2.FAULT_SIGNAL_STORE_ERROR,
    Fault.PLUGIN_ERROR: policy_pb2.FAULT_PLUGIN_ERROR,
    Fault.AUDIT_ERROR: policy_pb2.FAULT_AUDIT_ERROR,
    Fault.INTERNAL: policy_pb2.FAULT_INTERNAL,
}


def _enum(table: dict[int, Any], value: int, field: str) -> Any:
    try:
        return table[value]
    except KeyError:
        raise InvalidRequest(field, f"unknown enum value {value}") from None


def request_from_proto(msg: policy_pb2.DecideRequest) -> DecisionRequest:
    s = msg.subject
    registration = None
    if s.HasField("registration"):
        r = s.registration
        registration = Registration(
            r.council, r.region, r.number, _enum(_STATUS, r.status, "subject.registration.status")
        )
    device = None
    if msg.HasField("device"):
        d = msg.device
        age = d.patch_age_days if d.HasField("patch_age_days") else None
        device = Device(d.id, d.managed, d.compliant, d.os, age, d.disk_encrypted, d.endpoint_protection)
    c = msg.context
    at = timestamp_to_datetime(c.time, "context.time") if c.HasField("time") else None
    attributes: dict[str, Any] = {}
    if msg.HasField("attributes"):
        attributes = struct_to_dict(msg.attributes)
    return DecisionRequest(
        subject=Subject(s.id, tuple(s.roles), s.auth_method, _enum(_ASSURANCE, s.assurance, "subject.assurance"),
                        registration),
        resource=Resource(msg.resource.type, msg.resource.classification, msg.resource.id, msg.resource.owner,
                          tuple(msg.resource.consented_purposes)),
        action=msg.action,
        device=device,
        context=RequestContext(c.source_ip, c.user_agent, at, c.purpose, c.request_id),
        attributes=attributes,
    )  # fmt: skip


def decision_to_proto(decision: Decision) -> policy_pb2.DecideResponse:
    return policy_pb2.DecideResponse(
        decision=_OUTCOME[decision.outcome],
        trust_score=decision.trust_score,
        factors=[
            policy_pb2.Factor(name=f.name, score=f.score, weight=f.weight, contribution=f.contribution,
                              explanation=f.explanation)
            for f in decision.factors
        ],
        reasons=decision.reasons,
        obligations=decision.obligations,
        step_up=decision.step_up,
        policy_revision=decision.policy_revision,
        decision_id=decision.decision_id,
        fault=_FAULT[decision.fault],
        request_id=decision.request_id,
    )  # fmt: skip


# Which core error becomes which status code, most specific first (audit outages: the mesh's rules).
# Decide never raises: its failures are DENYs made by the core.
EDGE = Edge(
    (NotAReporter, grpc.StatusCode.PERMISSION_DENIED),
    (ReporterRateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (SignalStoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (SignalStoreError, grpc.StatusCode.UNAVAILABLE),
    (BundleError, grpc.StatusCode.FAILED_PRECONDITION, "bundle refused, the old one keeps serving"),
    (EngineError, grpc.StatusCode.UNAVAILABLE),
    (DecisionNotFound, grpc.StatusCode.NOT_FOUND),
    (ProofUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def _unreadable(msg: policy_pb2.DecideRequest) -> DecisionRequest:
    """What a refusal of a request that cannot be read records of it."""
    return DecisionRequest(Subject(msg.subject.id), Resource(msg.resource.type, ""), msg.action)


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, engine: PolicyEngine, proofs: DecisionProofs | None = None) -> None:
        self.engine = engine
        self.proofs = proofs

    def decide_proto(self, msg: policy_pb2.DecideRequest, caller: str) -> policy_pb2.DecideResponse:
        """One decision from a protobuf request, in this thread (in-process PEPs). Never raises."""
        try:
            request = request_from_proto(msg)
        except (InvalidRequest, ValueError) as exc:
            return decision_to_proto(self.engine.refuse(_unreadable(msg), f"invalid request: {exc}", caller))
        return decision_to_proto(self.engine.decide(request, caller))

    async def decide_proto_async(self, msg: policy_pb2.DecideRequest, caller: str) -> policy_pb2.DecideResponse:
        """`decide_proto` on the serving loop. Never raises."""
        try:
            request = request_from_proto(msg)
        except (InvalidRequest, ValueError) as exc:
            refused = await self.engine.refuse_async(_unreadable(msg), f"invalid request: {exc}", caller)
            return decision_to_proto(refused)
        return decision_to_proto(await self.engine.decide_async(request, caller))

    @EDGE.rpc
    async def Decide(
        self, request: policy_pb2.DecideRequest, context: grpc.aio.ServicerContext
    ) -> policy_pb2.DecideResponse:
        reply = await self.decide_proto_async(request, caller_id())
        if reply.fault == policy_pb2.FAULT_INVALID_REQUEST:
            # The refusal is audited as a DENY: its id lets the caller find that record.
            context.set_trailing_metadata(((headers.DECISION_ID, reply.decision_id),))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reply.reasons[0])
        return reply

    @EDGE.rpc
    async def DecideBatch(
        self, request: policy_pb2.DecideBatchRequest, context: grpc.aio.ServicerContext
    ) -> policy_pb2.DecideBatchResponse:
        if len(request.requests) > self.engine.max_batch:
            raise InvalidRequest(
                "requests", f"{len(request.requests)} requests; the maximum per batch is {self.engine.max_batch}"
            )
        caller = caller_id()
        # Side by side, so that the batch's audit records are made durable as one group.
        replies = await asyncio.gather(*(self.decide_proto_async(r, caller) for r in request.requests))
        return policy_pb2.DecideBatchResponse(responses=replies)

    @EDGE.rpc
    def ReportSignal(
        self, request: policy_pb2.ReportSignalRequest, context: grpc.ServicerContext
    ) -> policy_pb2.ReportSignalResponse:
        caller = caller_id()
        signal = Signal(
            subject_id=request.subject_id,
            kind=request.kind,
            severity=request.severity or 1.0,
            source=request.source,  # an annotation: the recorded source is the caller
        )
        if request.HasField("time"):
            try:
                signal = dataclasses.replace(signal, time=timestamp_to_datetime(request.time, "time"))
            except InvalidField as exc:  # refused and audited like any other malformed signal
                self.engine.refuse_signal(signal, exc, caller)
        return policy_pb2.ReportSignalResponse(behaviour_score=self.engine.report_signal(signal, caller))

    @EDGE.rpc
    def GetPolicyInfo(
        self, request: policy_pb2.GetPolicyInfoRequest, context: grpc.ServicerContext
    ) -> policy_pb2.PolicyInfo:
        info = self.engine.info()
        loaded = timestamp_pb2.Timestamp()
        loaded.FromNanoseconds(int(info.loaded_at * 1e9))
        return policy_pb2.PolicyInfo(
            engine=info.engine, revision=info.revision, packages=info.packages, loaded_time=loaded,
            trust_revision=info.trust_revision, last_error=info.last_error,
        )  # fmt: skip

    @EDGE.rpc
    def ProveDecision(
        self, request: policy_pb2.ProveDecisionRequest, context: grpc.ServicerContext
    ) -> audit_pb2.InclusionProof:
        if self.proofs is None:
            raise ProofUnavailable("this policy service has no audit service to ask for proofs")
        return self.proofs.prove(request.decision_id, caller_id())

    @EDGE.rpc
    def ReloadPolicy(
        self, request: policy_pb2.ReloadPolicyRequest, context: grpc.ServicerContext
    ) -> policy_pb2.ReloadPolicyResponse:
        result = self.engine.reload(caller_id())  # the watcher announces a swap to the other replicas
        return policy_pb2.ReloadPolicyResponse(revision=result.revision, changed=result.changed)
