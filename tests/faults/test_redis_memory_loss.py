"""Fault: the signal store's Redis loses its memory (restart without persistence, FLUSHALL) under steady
Decide load about subjects flagged `malware_detected`. An empty Redis must not read as a clean
history: every decision stays DENY (signal store error) until the policy service has restored the
signals from the audit trail, then DENY because of the flags. Real processes (audit on PostgreSQL,
policy, a Redis of the test's own), every acknowledged decision looked up in the trail."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import psycopg
import pytest
import redis

from tests.faults.support import FaultMesh, Load, assert_nothing_lost, spool_frames, tally, wait_for
from tests.security.test_signal_reporters import physician
from tests.support.own_redis import own_redis
from ztmesh._proto.policy.v1 import policy_pb2, policy_pb2_grpc

EPOCH = "ztmesh:signals:epoch"
SUBJECTS = [f"dr.fault{n}" for n in range(7)]  # every subject the steady load asks about


def _patient_record(n: int) -> policy_pb2.DecideRequest:
    """Dr. n reading a patient record for treatment: ALLOW with a clean history, DENY when flagged."""
    request = physician()
    request.subject.id = SUBJECTS[n % len(SUBJECTS)]
    return request


class FlaggedLoad(Load):
    """The steady load of tests/faults, asking only about flagged subjects: every answer must be DENY."""

    def request(self, n: int) -> tuple[policy_pb2.DecideRequest, bool]:
        return _patient_record(n), False


def _signals_in_trail(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM audit_records WHERE action = 'policy.signal'").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize(("loss", "audit_down"), [("restart", False), ("flushall", False), ("flushall", True)],
                         ids=["restart", "flushall", "flushall-with-audit-down"])  # fmt: skip
def test_a_redis_that_lost_its_memory_never_allows_a_flagged_subject(
    fault_mesh: Callable[..., FaultMesh], loss: str, audit_down: bool
) -> None:
    with own_redis() as redis_server:  # without persistence, as the dev overlay used to run it
        store = redis_server.client()
        mesh = fault_mesh(policy_env={"ZTMESH_REDIS_URL": redis_server.url})  # ready once the store is whole
        assert store.exists(EPOCH) == 1
        operator = policy_pb2_grpc.PolicyServiceStub(mesh.pki.channel("client", mesh.policy.port))
        assert operator.Decide(_patient_record(0), timeout=10).decision == policy_pb2.DECISION_ALLOW  # unflagged
        for subject in SUBJECTS:
            flag = policy_pb2.ReportSignalRequest(subject_id=subject, kind="malware_detected", source="edr")
            operator.ReportSignal(flag, timeout=10)
        wait_for(lambda: _signals_in_trail(mesh.database_url) == len(SUBJECTS), 30, "the flags in the audit trail")
        with FlaggedLoad(mesh.pki, mesh.policy, clients=2, rate=25) as load:
            load.wait_answers(20)
            if audit_down:  # nothing to restore from: DENY until the trail answers again
                mesh.audit.kill()
            sealed = store.get(EPOCH)  # a restore seals the store with a new marker
            lost_at = time.monotonic()
            if loss == "restart":
                redis_server.stop()
                redis_server.start()
            else:
                store.flushall()
            if audit_down:
                load.wait_answers(100)  # two seconds without the trail; the last one well after the flush
                during = load.since(time.monotonic() - 1.0)
                assert during and {a.fault for a in during} == {"FAULT_SIGNAL_STORE_ERROR"}, mesh.policy.tail(20)
                mesh.audit.start()
                lost_at = time.monotonic()  # the recovery below counts from the trail's return

            def first(after: float, fault: str) -> float | None:
                return min((a.at for a in load.since(after) if a.fault == fault), default=None)

            resealed: list[float] = []  # when the test first saw the store sealed anew

            def restored_at() -> float | None:  # a DENY made with the flag again, once the loss was noticed
                with contextlib.suppress(redis.RedisError):  # a restarting Redis refuses meanwhile
                    if not resealed and store.get(EPOCH) not in (None, sealed):
                        resealed.append(time.monotonic())
                noticed = lost_at if audit_down else first(lost_at, "FAULT_SIGNAL_STORE_ERROR")
                # The monitor's once-a-second check may find a flush first and restore it (~0.1 s)
                # before any decision read the empty store: then the new marker says it was noticed.
                noticed = noticed or (resealed[0] if resealed else None)
                return None if noticed is None else first(noticed, "FAULT_UNSPECIFIED")

            wait_for(restored_at, 30, "the flags restored from the audit trail")
            restored = (restored_at() or 0.0) - lost_at
            load.wait_answers(20)
        store_errors = sum(1 for a in load.answers if a.fault == "FAULT_SIGNAL_STORE_ERROR")
        after = "audit's return" if audit_down else "the loss"
        recovery = f"flags restored from the trail {restored:.2f}s after {after} ({store_errors} DENY by store error)"
        scenario = f"redis {loss} (no persistence){' during an audit outage' if audit_down else ''}, 7 flagged subjects"
        result = tally(scenario, load, mesh.database_url, recovery)
        assert_nothing_lost(result)  # wrong_allow counts every ALLOW: each subject asked about is flagged
        # A flush the monitor restores before the next decision leaves none in the gap; a restart (Redis
        # down, then empty) and a flush with audit down always do, and must show the gap as DENY.
        if loss == "restart" or audit_down:
            assert store_errors > 0, "the loss was never noticed: the test did not exercise it"
        assert resealed or store_errors > 0, "the loss was never noticed: neither a decision nor a restore"


def test_flags_reported_while_audit_was_down_survive_a_redis_flush(fault_mesh: Callable[..., FaultMesh]) -> None:
    """The flags are accepted while audit is down: in Redis, and their records only in the policy spool.
    Redis is then flushed and audit returns: the restore must replay the spooled records too (it does
    not wait for the spool to drain), so no flagged subject is ever allowed."""
    with own_redis() as redis_server:
        store = redis_server.client()
        mesh = fault_mesh(policy_env={"ZTMESH_REDIS_URL": redis_server.url})
        operator = policy_pb2_grpc.PolicyServiceStub(mesh.pki.channel("client", mesh.policy.port))
        mesh.audit.kill()
        for subject in SUBJECTS:
            flag = policy_pb2.ReportSignalRequest(subject_id=subject, kind="malware_detected", source="edr")
            operator.ReportSignal(flag, timeout=10)  # accepted: durable in the spool, audit being down
        assert spool_frames(mesh.policy) > 0 and _signals_in_trail(mesh.database_url) == 0
        with FlaggedLoad(mesh.pki, mesh.policy, clients=2, rate=25) as load:
            load.wait_answers(20)
            store.flushall()
            load.wait_answers(25)
            mesh.audit.start()
            back_at = time.monotonic()
            wait_for(lambda: store.exists(EPOCH), 30, "the store restored")
            restored = time.monotonic() - back_at
            assert all(store.exists(f"ztmesh:signals:s:{s}") for s in SUBJECTS), "a flag was not replayed"
            load.wait_answers(20)
        store_errors = sum(1 for a in load.answers if a.fault == "FAULT_SIGNAL_STORE_ERROR")
        recovery = f"restored {restored:.2f}s after audit's return, flags from the spool ({store_errors} DENY)"
        result = tally("redis flushall, flags reported while audit was down", load, mesh.database_url, recovery)
        assert_nothing_lost(result)
        assert store_errors > 0, "the loss was never noticed: the test did not exercise it"
