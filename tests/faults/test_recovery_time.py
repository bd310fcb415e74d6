"""How soon things are right again once audit is back: the spool starts draining within about a second of
audit answering, and a spool that was full stops refusing decisions within about a second of audit's
return — not after a back-off that grew during the outage."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.faults.support import FaultMesh, assert_nothing_lost, tally, trail_decisions, wait_for, wait_in_trail


def test_the_spool_drains_within_a_second_or_so_of_audit_answering(fault_mesh: Callable[..., FaultMesh]) -> None:
    mesh = fault_mesh()
    with mesh.load(clients=2, rate=25) as load:
        load.wait_answers(20)
        mesh.audit.kill()
        load.wait_answers(500)  # ~10 s of outage: the old back-off had grown to 3-6 s by then, toward 30 s
        waiting = {a.decision_id for a in load.acknowledged()} - set(trail_decisions(mesh.database_url))
        assert len(waiting) > 300
        mesh.audit.start()
        started = wait_in_trail(waiting, mesh.database_url, every="any")
        drained = started + wait_in_trail(waiting, mesh.database_url)
        load.wait_answers(20)
    result = tally("audit SIGKILLed ~10 s, drain after its return", load, mesh.database_url,
                   recovery=f"drain started {started:.2f}s, done {drained:.2f}s after audit was SERVING")  # fmt: skip
    assert_nothing_lost(result)
    assert started < 3.0, result.line()


def test_a_full_spool_stops_refusing_within_a_second_or_so_of_audit_answering(
    fault_mesh: Callable[..., FaultMesh],
) -> None:
    mesh = fault_mesh(policy_env={"ZTMESH_AUDIT_SPOOL_MAX_BYTES": "60000"})  # about a hundred decisions
    with mesh.load(clients=2, rate=25) as load:
        load.wait_answers(20)
        mesh.audit.kill()
        wait_for(lambda: any(a.fault == "FAULT_AUDIT_ERROR" for a in load.answers), 60, "the spool filling up")
        load.wait_answers(250)  # refusing for ~5 s: fail closed, every one of them a DENY
        mesh.audit.start()
        back = time.monotonic()
        load.wait_answers(100)
        refused_after = [a.at - back for a in load.since(back) if a.fault == "FAULT_AUDIT_ERROR"]
    refusing = max(refused_after, default=0.0)
    refused = [a for a in load.answers if a.fault == "FAULT_AUDIT_ERROR"]
    assert refused and all(a.outcome == "DENY" for a in refused)
    recovery = f"last refusal {refusing:.2f}s after audit was SERVING ({len(refused)} refused, all DENY)"
    result = tally("spool full during audit outage", load, mesh.database_url, recovery=recovery)
    assert_nothing_lost(result)
    assert refusing < 3.0, result.line()
