"""Proof that a decision was recorded: the audit trail's inclusion proof of the decision's record,
handed only to whoever the decision was made for (or an operator).

The policy service asks audit (ProveInclusion by decision id) and checks the record's `caller`
before answering: a caller probing someone else's decision id gets the same NOT_FOUND as for an id
that does not exist, so decision ids leak nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc

from ztmesh._proto.audit.v1 import audit_pb2, audit_pb2_grpc
from ztmesh.policy.errors import PolicyError

_TIMEOUT = 10.0


class DecisionNotFound(PolicyError):
    """No recorded decision with that id for this caller."""


class ProofUnavailable(PolicyError):
    """The audit service could not give the proof now (unreachable, or no checkpoint could be signed)."""


class DecisionProofs:
    def __init__(self, audit_channel: grpc.Channel, is_operator: Callable[[str], bool]) -> None:
        self._audit = audit_pb2_grpc.AuditServiceStub(audit_channel)
        self._is_operator = is_operator

    def prove(self, decision_id: str, caller: str) -> audit_pb2.InclusionProof:
        if not decision_id:
            raise DecisionNotFound("decision_id: give the id of a decision (DecideResponse.decision_id)")
        try:
            proof = self._audit.ProveInclusion(
                audit_pb2.ProveInclusionRequest(decision_id=decision_id), timeout=_TIMEOUT
            )
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise DecisionNotFound(f"no recorded decision {decision_id!r} for {caller or 'this caller'}") from None
            raise ProofUnavailable(f"audit could not prove decision {decision_id!r}: {err.code().name}: "
                                   f"{err.details()}") from None  # fmt: skip
        recorded_for = json.loads(proof.record).get("caller", "")
        if recorded_for != caller and not self._is_operator(caller):
            raise DecisionNotFound(f"no recorded decision {decision_id!r} for {caller or 'this caller'}")
        return proof
