"""Typed clients of PolicyService.Decide with deadlines, retries on UNAVAILABLE only, and a local
fail-closed default: when the policy service cannot answer, the verdict is DENY with the reason."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import struct_pb2

from ztmesh._proto.policy.v1 import policy_pb2, policy_pb2_grpc


class Outcome(enum.Enum):
    ALLOW = policy_pb2.DECISION_ALLOW
    DENY = policy_pb2.DECISION_DENY
    CHALLENGE = policy_pb2.DECISION_CHALLENGE


@dataclass(frozen=True)
class Verdict:
    """The decision as a caller needs it. `local` is True when it was made here (fail closed)."""

    outcome: Outcome
    reasons: tuple[str, ...] = ()
    obligations: tuple[str, ...] = ()
    step_up: tuple[str, ...] = ()
    trust_score: float = 0.0
    decision_id: str = ""
    policy_revision: str = ""
    local: bool = False

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW

    @classmethod
    def from_proto(cls, reply: policy_pb2.DecideResponse) -> Verdict:
        try:
            outcome = Outcome(reply.decision)
        except ValueError:  # an answer we do not understand is not a permission
            return cls.fail_closed(f"policy service answered an unknown decision {reply.decision}")
        return cls(
            outcome,
            tuple(reply.reasons),
            tuple(reply.obligations),
            tuple(reply.step_up),
            reply.trust_score,
            reply.decision_id,
            reply.policy_revision,
        )

    @classmethod
    def fail_closed(cls, reason: str) -> Verdict:
        return cls(Outcome.DENY, reasons=(reason,), local=True)


@dataclass(frozen=True)
class AccessRequest:
    """The common fields of a decision request, without protobuf. `extra` is merged last."""

    subject_id: str
    action: str
    resource_type: str
    classification: str
    resource_id: str = ""
    roles: Sequence[str] = ()
    purpose: str = ""
    consented_purposes: Sequence[str] = ()
    source_ip: str = ""
    request_id: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_proto(self) -> policy_pb2.DecideRequest:
        attributes = struct_pb2.Struct()
        attributes.update(self.attributes)
        return policy_pb2.DecideRequest(
            subject=policy_pb2.Subject(id=self.subject_id, roles=list(self.roles)),
            resource=policy_pb2.Resource(
                type=self.resource_type,
                id=self.resource_id,
                classification=self.classification,
                consented_purposes=list(self.consented_purposes),
            ),
            action=self.action,
            context=policy_pb2.RequestContext(
                purpose=self.purpose, source_ip=self.source_ip, request_id=self.request_id
            ),
            attributes=attributes,
        )


def _as_proto(request: AccessRequest | policy_pb2.DecideRequest) -> policy_pb2.DecideRequest:
    return request.to_proto() if isinstance(request, AccessRequest) else request


@dataclass(frozen=True)
class RetryPolicy:
    timeout: float = 0.5  # per attempt, seconds
    attempts: int = 3
    backoff: float = 0.05  # doubled after each failed attempt


class PolicyClient:
    def __init__(self, channel: grpc.Channel, retry: RetryPolicy | None = None) -> None:
        self._stub = policy_pb2_grpc.PolicyServiceStub(channel)
        self._retry = retry or RetryPolicy()

    def decide(self, request: AccessRequest | policy_pb2.DecideRequest) -> Verdict:
        message = _as_proto(request)
        delay = self._retry.backoff
        for attempt in range(1, self._retry.attempts + 1):
            try:
                return Verdict.from_proto(self._stub.Decide(message, timeout=self._retry.timeout))
            except grpc.RpcError as err:
                # Only UNAVAILABLE is safe and useful to retry; anything else is the answer.
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == self._retry.attempts:
                    return Verdict.fail_closed(f"policy service error {err.code().name}: {err.details()}")
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")


class AsyncPolicyClient:
    def __init__(self, channel: grpc.aio.Channel, retry: RetryPolicy | None = None) -> None:
        self._stub = policy_pb2_grpc.PolicyServiceStub(channel)
        self._retry = retry or RetryPolicy()

    async def decide(self, request: AccessRequest | policy_pb2.DecideRequest) -> Verdict:
        message = _as_proto(request)
        delay = self._retry.backoff
        for attempt in range(1, self._retry.attempts + 1):
            try:
                return Verdict.from_proto(await self._stub.Decide(message, timeout=self._retry.timeout))
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
                if code != grpc.StatusCode.UNAVAILABLE or attempt == self._retry.attempts:
                    return Verdict.fail_closed(f"policy service error {code.name}: {err.details()}")
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")
