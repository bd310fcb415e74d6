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
        not_found = DecisionNotFound(f"no recorded decision {decision_id!r} for {caller or 'this caller'}")
        if not decision_id:
            raise DecisionNotFound("decision_id: give the id of a decision (DecideResponse.decision_id)")
        # Whose decision it is, first: nothing about someone else's decision (not even that audit cannot
        # prove it right now) may reach this caller.
        try:
            records = [r for page in self._audit.Query(audit_pb2.QueryRequest(decision_id=decision_id, page_size=10),
                                                       timeout=_TIMEOUT) for r in page.records]  # fmt: skip
        except grpc.RpcError as err:
            raise ProofUnavailable(f"audit could not look up decisions: {err.code().name}") from None
        ours = [r for r in records if r.event.service == "policy" and r.event.action == "decide"]
        if not ours or (ours[0].event.caller_spiffe_id != caller and not self._is_operator(caller)):
            raise not_found
        try:
            proof = self._audit.ProveInclusion(audit_pb2.ProveInclusionRequest(event_id=ours[0].event.event_id),
                                               timeout=_TIMEOUT)  # fmt: skip
        except grpc.RpcError as err:
            raise ProofUnavailable(f"audit could not prove decision {decision_id!r}: {err.code().name}: "
                                   f"{err.details()}") from None  # fmt: skip
        if json.loads(proof.record).get("decision_id") != decision_id:  # audit answered for another record
            raise ProofUnavailable(f"audit's proof for decision {decision_id!r} is about another record")
        return proof
