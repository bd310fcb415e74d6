"""Attack: a flood of signals about fresh subjects, to make the store forget a live malware flag.
A full store refuses new subjects (RESOURCE_EXHAUSTED naming the limit) and keeps every signal that
still counts; the flagged subject stays DENY. Against the in-process store and a real Redis at its
maxmemory, through a real policy service (and its audit service) over mTLS."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import redis

from tests.security.test_signal_reporters import physician, stub
from tests.support.audited_policy import audited_policy
from tests.support.own_redis import own_redis
from tests.support.processes import wait_until
from ztmesh._proto.policy.v1 import policy_pb2
from ztmesh.policy.errors import SignalStoreError, SignalStoreFull
from ztmesh.policy.signals import RedisSignalStore

FLAG = policy_pb2.ReportSignalRequest(subject_id="dr.ana", kind="malware_detected")
UNLIMITED = {"ZTMESH_SIGNAL_BURST": "1000000", "ZTMESH_SIGNAL_RATE": "1000000"}


def _fresh(i: int) -> policy_pb2.ReportSignalRequest:
    return policy_pb2.ReportSignalRequest(subject_id=f"flood-{i}", kind="failed_login", severity=0.01)


def test_a_full_memory_store_refuses_new_subjects_and_keeps_the_malware_flag(pki, tmp_path):
    with audited_policy(pki, tmp_path, {**UNLIMITED, "ZTMESH_SIGNAL_MAX_SUBJECTS": "50"}) as mesh:
        operator = stub(mesh, "client")
        operator.ReportSignal(FLAG, timeout=10)
        assert operator.Decide(physician(), timeout=10).decision == policy_pb2.DECISION_DENY
        refused = 0
        for i in range(120):
            try:
                operator.ReportSignal(_fresh(i), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "50 subjects" in exc.details() and "ZTMESH_SIGNAL_MAX_SUBJECTS" in exc.details()
                refused += 1
        assert refused == 120 - 49  # dr.ana holds one of the 50 places
        denied = operator.Decide(physician(), timeout=10)
        assert denied.decision == policy_pb2.DECISION_DENY
        assert {f.name: f.score for f in denied.factors}["behaviour"] == 0.0


@pytest.fixture
def small_redis() -> Iterator[redis.Redis]:
    """A Redis of its own, so the test can fill it to its maxmemory (noeviction, as shipped)."""
    with own_redis("--maxmemory-policy", "noeviction") as server:
        client = server.client()
        yield client
        client.close()


def test_a_full_redis_refuses_new_signals_and_keeps_the_malware_flag(pki, tmp_path, small_redis):
    url = f"redis://127.0.0.1:{small_redis.connection_pool.connection_kwargs['port']}/0"
    with audited_policy(pki, tmp_path, UNLIMITED, redis_url=url) as mesh:
        operator = stub(mesh, "client")
        wait_until(lambda: small_redis.exists("ztmesh:signals:epoch") == 1, 10, "the empty store is marked whole")
        operator.ReportSignal(FLAG, timeout=10)
        assert operator.Decide(physician(), timeout=10).decision == policy_pb2.DECISION_DENY
        used = int(small_redis.info("memory")["used_memory"])
        small_redis.config_set("maxmemory", used + 256 * 1024)  # room for a few thousand subjects
        flood = RedisSignalStore(url)  # the flood at store speed; the gRPC path is the same record call
        with pytest.raises(SignalStoreFull, match="maxmemory"):
            for i in range(200_000):
                flood.record(f"flood-{i}", "failed_login", 0.01, 1800.0, now=0.0)
        refusals = []
        for i in range(200):  # at the edge of maxmemory a write may still squeeze in now and then
            try:
                operator.ReportSignal(_fresh(-i), timeout=10)
            except grpc.RpcError as exc:
                refusals.append((exc.code(), "maxmemory" in exc.details()))
        assert (grpc.StatusCode.RESOURCE_EXHAUSTED, True) in refusals
        assert {code for code, _ in refusals} <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
        assert operator.Decide(physician(), timeout=10).decision == policy_pb2.DECISION_DENY
        flood.close()


def test_a_redis_that_may_evict_signals_is_refused(small_redis):
    url = f"redis://127.0.0.1:{small_redis.connection_pool.connection_kwargs['port']}/0"
    store = RedisSignalStore(url)
    store.restore([], {})
    small_redis.config_set("maxmemory", 64 * 1024 * 1024)
    small_redis.config_set("maxmemory-policy", "allkeys-lru")
    status = store.status(0.0)
    assert not status.ready and "maxmemory-policy is allkeys-lru" in status.problem
    with pytest.raises(SignalStoreError, match="set maxmemory-policy noeviction"):
        store.state("dr.ana", 0.0, {"malware_detected": 604800.0})
    store.close()
