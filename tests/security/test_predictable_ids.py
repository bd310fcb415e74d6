"""Attack: predicting decision and event ids. They reach clients (Decide replies, ext_authz headers,
audit records), so they are UUIDv7 whose random bits come from the OS CSPRNG: seeding or replacing
Python's `random` (MT19937, predictable from enough samples) changes nothing, nor does a fork."""

from __future__ import annotations

import os
import random
import time
import uuid

import grpc
import pytest

from tests.support.mesh import running, settings_for
from ztmesh._proto.policy.v1 import policy_pb2, policy_pb2_grpc
from ztmesh.mesh.auditing import AuditEvent, uuid7
from ztmesh.policy.app import build_app

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def policy(pki, tmp_path, monkeypatch) -> policy_pb2_grpc.PolicyServiceStub:
    monkeypatch.setenv("ZTMESH_POLICY_DIR", os.path.join(REPO, "policies", "rego"))
    monkeypatch.setenv("ZTMESH_TRUST_WEIGHTS", os.path.join(REPO, "policies", "trust", "weights.json"))
    monkeypatch.setenv("ZTMESH_THREAT_DIR", os.path.join(REPO, "policies", "threat"))
    settings = settings_for(pki, tmp_path)
    with running(build_app(settings), settings) as server:
        yield policy_pb2_grpc.PolicyServiceStub(pki.channel("client", server.port))


def decision_id(stub: policy_pb2_grpc.PolicyServiceStub) -> str:
    request = policy_pb2.DecideRequest(
        subject=policy_pb2.Subject(id="dr.ana", roles=["physician"]),
        resource=policy_pb2.Resource(type="patient_record", classification="patient_data", id="p-42"),
        action="read",
    )
    try:
        return stub.Decide(request, timeout=10).decision_id
    except grpc.RpcError as err:  # a refused request is audited under an id all the same
        return str(dict(err.trailing_metadata())["x-ztmesh-decision-id"])  # type: ignore[attr-defined]


def random_bits(value: str) -> int:
    """The 74 random bits of a UUIDv7 (rand_a and rand_b)."""
    number = uuid.UUID(value).int
    return (number >> 64 & 0xFFF) << 62 | number & ((1 << 62) - 1)


def millis(value: str) -> int:
    return uuid.UUID(value).int >> 80


def test_decision_ids_are_uuid7_ordered_by_time(policy) -> None:
    before = time.time_ns() // 1_000_000
    ids = []
    for _ in range(12):
        ids.append(decision_id(policy))
        started = time.monotonic_ns()
        while time.monotonic_ns() - started < 1_100_000:  # the next id falls in a later millisecond
            pass
    after = time.time_ns() // 1_000_000
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= millis(value) <= after
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_seeding_or_replacing_random_does_not_reproduce_ids(policy, monkeypatch) -> None:
    rounds = []
    for _ in range(2):
        random.seed(1234)
        rounds.append([decision_id(policy) for _ in range(3)])
    assert set(rounds[0]).isdisjoint(rounds[1])

    # An attacker who knows the generator's state can emit its outputs; ids must not be among them.
    monkeypatch.setattr(random, "getrandbits", lambda k: 0)
    monkeypatch.setattr(random, "random", lambda: 0.0)
    with_patched = (
        [decision_id(policy) for _ in range(3)] + [uuid7() for _ in range(3)] + [AuditEvent("t", "a", "OK").event_id]
    )
    bits = {random_bits(value) for value in with_patched}
    assert len(bits) == len(with_patched) and 0 not in bits


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    uuid7()  # the parent holds unread random values when it forks
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        os.write(write_end, "\n".join(uuid7() for _ in range(50)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        children = set(pipe.read().split("\n"))
    os.waitpid(child, 0)
    parents = {uuid7() for _ in range(50)}
    assert len(children) == 50 and {random_bits(v) for v in children}.isdisjoint({random_bits(v) for v in parents})
