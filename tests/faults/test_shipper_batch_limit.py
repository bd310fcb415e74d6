"""Audit takes at most 100 events per Append (ZTMESH_AUDIT_MAX_BATCH, a documented setting) while the
emitter's shipper starts with batches of 500: the backlog of an outage must still drain, twice over."""

from __future__ import annotations

from collections.abc import Callable

from tests.faults.support import FaultMesh, assert_nothing_lost, spool_frames, tally, wait_in_trail


def test_a_receiver_taking_smaller_batches_still_gets_the_whole_backlog(fault_mesh: Callable[..., FaultMesh]) -> None:
    mesh = fault_mesh(audit_env={"ZTMESH_AUDIT_MAX_BATCH": "100"})
    recoveries = []
    with mesh.load(clients=4, rate=40) as load:
        load.wait_answers(50)
        for _outage in range(2):  # the second outage is where the old shipper's thread died
            mesh.audit.kill()
            load.wait_answers(250)  # a few hundred decisions spooled: batches of 500 would be refused
            assert spool_frames(mesh.policy) > 0
            waiting = {a.decision_id for a in load.acknowledged()}
            mesh.audit.start()
            recoveries.append(wait_in_trail(waiting, mesh.database_url))
        load.wait_answers(50)
    log = mesh.policy.tail(400)
    assert "at most 100 per Append" in log, log
    result = tally("audit max batch 100, two outages", load, mesh.database_url,
                   recovery=" / ".join(f"{r:.1f}s" for r in recoveries))  # fmt: skip
    assert_nothing_lost(result)
