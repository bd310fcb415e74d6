"""Typed clients of PolicyService.Decide with deadlines, retries on UNAVAILABLE only, and a local
fail-closed default: when the policy service cannot answer, the verdict is DENY with the reason.

`PolicyClient`/`AsyncPolicyClient` ask a policy service over gRPC (mTLS). `LocalPolicyClient`/
`AsyncLocalPolicyClient` ask a decide function in this process (e.g. `PolicyServicer.decide_proto`),
with the same verdicts and the same fail-closed default, for services that embed the engine and for
tests. The interceptors take any of them (`Decider` / `AsyncDecider`).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf import json_format, struct_pb2

from ztmesh._proto.policy.v1 import policy_pb2, policy_pb2_grpc
from ztmesh.policy import headers


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
    def fail_closed(cls, reason: str, decision_id: str = "") -> Verdict:
        """A DENY made here. `decision_id` is the server's when it refused the request but audited it."""
        return cls(Outcome.DENY, reasons=(reason,), decision_id=decision_id, local=True)



def _refusal(code: grpc.StatusCode, err: Any) -> Verdict:
    """The local DENY for a failed call, keeping the decision id the policy service sent in a trailer
    when it refused a malformed request (its audit record carries the same id)."""
    trailers = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    decision_id = next((str(v) for k, v in trailers or () if k == headers.DECISION_ID), "")
    return Verdict.fail_closed(f"policy service error {code.name}: {err.details()}", decision_id)


ASSURANCE_LEVELS = {
    "": policy_pb2.ASSURANCE_LEVEL_UNSPECIFIED,
    "low": policy_pb2.ASSURANCE_LEVEL_LOW,
    "medium": policy_pb2.ASSURANCE_LEVEL_MEDIUM,
    "high": policy_pb2.ASSURANCE_LEVEL_HIGH,
}


@dataclass(frozen=True)
class AccessRequest:
    """The common fields of a decision request, without protobuf.

    `auth_method` is how the subject authenticated (`mtls`, `pwd,otp`...), `assurance` one of
    low/medium/high (empty: unspecified), `device` the posture fields of policy.v1.Device by name
    (`managed`, `compliant`, `patch_age_days`...): the trust score is computed from them, so a
    request that leaves them out is trusted little."""

    subject_id: str
    action: str
    resource_type: str
    classification: str
    resource_id: str = ""
    roles: Sequence[str] = ()
    auth_method: str = ""
    assurance: str = ""
    device: Mapping[str, Any] | None = None
    purpose: str = ""
    consented_purposes: Sequence[str] = ()
    source_ip: str = ""
    user_agent: str = ""
    request_id: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.assurance not in ASSURANCE_LEVELS:
            raise ValueError(f"assurance must be one of low, medium, high or empty, not {self.assurance!r}")

    def to_proto(self) -> policy_pb2.DecideRequest:
        attributes = struct_pb2.Struct()
        attributes.update(self.attributes)
        device = None
        if self.device is not None:
            device = json_format.ParseDict(dict(self.device), policy_pb2.Device())
        return policy_pb2.DecideRequest(
            subject=policy_pb2.Subject(
                id=self.subject_id,
                roles=list(self.roles),
                auth_method=self.auth_method,
                assurance=ASSURANCE_LEVELS[self.assurance],
            ),
            device=device,
            resource=policy_pb2.Resource(
                type=self.resource_type,
                id=self.resource_id,
                classification=self.classification,
                consented_purposes=list(self.consented_purposes),
            ),
            action=self.action,
            context=policy_pb2.RequestContext(
                purpose=self.purpose,
                source_ip=self.source_ip,
                user_agent=self.user_agent,
                request_id=self.request_id,
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


class Decider(Protocol):
    """What the sync interceptor needs: a verdict for a request, never an exception."""

    def decide(self, request: AccessRequest | policy_pb2.DecideRequest) -> Verdict: ...


class AsyncDecider(Protocol):
    async def decide(self, request: AccessRequest | policy_pb2.DecideRequest) -> Verdict: ...


DecideFunction = Callable[[policy_pb2.DecideRequest, str], policy_pb2.DecideResponse]


class LocalPolicyClient:
    """Decisions from a decide function in this process, e.g. `PolicyServicer(engine).decide_proto`;
    `caller` is the SPIFFE ID recorded as the asker. Anything it raises is a local DENY."""

    def __init__(self, decide: DecideFunction, caller: str = "") -> None:
        self._decide = decide
        self._caller = caller

    def decide(self, request: AccessRequest | policy_pb2.DecideRequest) -> Verdict:
        try:
            return Verdict.from_proto(self._decide(_as_proto(request), self._caller))
        except Exception as exc:  # fail closed, whatever broke
            return Verdict.fail_closed(f"local policy engine error {type(exc).__name__}: {exc}")


class AsyncLocalPolicyClient:
    """`LocalPolicyClient` for asyncio: the decision runs in a worker thread, off the event loop."""

    def __init__(self, decide: DecideFunction, caller: str = "") -> None:
        self._local = LocalPolicyClient(decide, caller)

    async def decide(self, request: AccessRequest | policy_pb2.DecideRequest) -> Verdict:
        return await asyncio.to_thread(self._local.decide, request)


class PolicyClient:
    """PolicyService.Decide over a (mTLS) channel. Each attempt has `retry.timeout` as its deadline;
    only UNAVAILABLE is tried again (up to `retry.attempts`, with backoff). Every other error, and
    UNAVAILABLE on the last attempt, is a local DENY whose reason names the status: a request the
    service refuses as malformed (INVALID_ARGUMENT) is therefore a DENY, never an exception."""

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
                    return _refusal(err.code(), err)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")


class AsyncPolicyClient:
    """`PolicyClient` for a `grpc.aio` channel, with the same retries and fail-closed verdicts."""

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
                    return _refusal(code, err)
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")
