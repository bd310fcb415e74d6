"""Audit frozen (SIGSTOP) under load: a decision waits for audit at most the short per-attempt deadline
(ZTMESH_AUDIT_APPEND_TIMEOUT) before its record goes to the spool, and after SIGCONT nothing is missing."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from tests.faults.support import FaultMesh, assert_nothing_lost, spool_frames, tally, wait_in_trail


def test_a_frozen_audit_costs_a_decision_at_most_the_per_attempt_deadline(
    fault_mesh: Callable[..., FaultMesh],
) -> None:
    mesh = fault_mesh(policy_env={"ZTMESH_AUDIT_APPEND_TIMEOUT": "0.5"})
    with mesh.load(clients=4, rate=25) as load:
        load.wait_answers(40)
        mesh.audit.signal(signal.SIGSTOP)
        frozen = time.monotonic()
        load.wait_answers(300)  # ~3 s of decisions while audit holds every connection open and answers nothing
        during = load.since(frozen)
        mesh.audit.signal(signal.SIGCONT)
        waiting = {a.decision_id for a in load.acknowledged()}
        drained = wait_in_trail(waiting, mesh.database_url)
        load.wait_answers(40)
    assert spool_frames(mesh.policy) > 0  # the records went to the spool, not into a 5 s wait
    latencies = sorted(a.latency for a in during)
    p99, worst = latencies[int(len(latencies) * 0.99)], latencies[-1]
    assert all(a.acknowledged for a in during), [a for a in during if not a.acknowledged][:3]
    result = tally("audit SIGSTOPped ~3 s", load, mesh.database_url,
                   recovery=f"decision p99 {p99:.3f}s, worst {worst:.3f}s while frozen; drained {drained:.2f}s "
                   "after SIGCONT")  # fmt: skip
    assert_nothing_lost(result)
    assert worst < 2.0, result.line()  # the deadline (0.5 s) and some scheduling; it was the full 5 s
