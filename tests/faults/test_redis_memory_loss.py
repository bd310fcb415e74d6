"""Fault: the signal store's Redis loses its memory (restart without persistence, FLUSHALL) while
decisions are being made about a subject flagged `malware_detected`. An empty Redis must not read
as a clean history: every decision stays DENY (signal store error) until the policy service has
restored the signals from the audit trail, then DENY because of the flag. Real Redis, real policy
and audit services over mTLS; the recovery time is printed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.security.test_signal_reporters import physician, stub
from tests.support.audited_policy import audited_policy, wait_until
from tests.support.own_redis import OwnRedis, own_redis
from ztmesh._proto.policy.v1 import policy_pb2

EPOCH = "ztmesh:signals:epoch"


@pytest.fixture
def store_redis() -> Iterator[OwnRedis]:
    with own_redis() as server:  # without persistence, as the dev overlay used to run it
        yield server


@pytest.mark.parametrize("loss", ["restart", "flushall"])
def test_a_redis_that_lost_its_memory_never_allows_a_flagged_subject(pki, tmp_path, store_redis, loss):
    with audited_policy(pki, tmp_path, {}, redis_url=store_redis.url) as mesh:
        operator = stub(mesh, "client")
        wait_until(lambda: store_redis.client().exists(EPOCH) == 1, 10, "the new store is marked whole")
        assert operator.Decide(physician(), timeout=10).decision == policy_pb2.DECISION_ALLOW
        operator.ReportSignal(policy_pb2.ReportSignalRequest(subject_id="dr.ana", kind="malware_detected"), timeout=10)
        assert operator.Decide(physician(), timeout=10).decision == policy_pb2.DECISION_DENY
        assert mesh.wait_for_records(1, service="policy", action="policy.signal", outcome="OK")

        lost_at = time.monotonic()
        if loss == "restart":
            store_redis.stop()
            store_redis.start()
        else:
            store_redis.client().flushall()
        decisions = faults = 0
        restored_after = None
        while time.monotonic() - lost_at < 30:
            reply = operator.Decide(physician(), timeout=10)
            decisions += 1
            assert reply.decision != policy_pb2.DECISION_ALLOW, f"wrong ALLOW after {decisions} decisions"
            if reply.fault == policy_pb2.FAULT_SIGNAL_STORE_ERROR:
                faults += 1
                assert "signal store unavailable" in reply.reasons[0]
            elif {f.name: f.score for f in reply.factors}.get("behaviour") == 0.0:
                restored_after = time.monotonic() - lost_at  # DENY again because of the restored flag
                break
            time.sleep(0.02)
        assert restored_after is not None, "the signals were not restored within 30 s"
        print(f"\n{loss}: {decisions} decisions, {faults} DENY by store error, 0 wrong ALLOW, "
              f"flag restored from the audit trail after {restored_after:.2f} s")  # fmt: skip
        assert store_redis.client().exists(EPOCH) == 1
        assert operator.Decide(physician(), timeout=10).decision == policy_pb2.DECISION_DENY
