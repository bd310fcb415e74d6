"""The policy service SIGKILLed twice under load, the second time with audit down and a hundred or more
decisions spooled and unshipped: after the restarts every acknowledged decision is in the trail, once."""

from __future__ import annotations

from collections.abc import Callable

from tests.faults.support import FaultMesh, assert_nothing_lost, spool_frames, tally, wait_for, wait_in_trail


def test_policy_killed_with_an_unshipped_spool_loses_no_decision(fault_mesh: Callable[..., FaultMesh]) -> None:
    mesh = fault_mesh()
    with mesh.load(clients=2, rate=25) as load:
        load.wait_answers(50)
        mesh.policy.kill()  # audit up: whatever was in flight was answered only once durable
        mesh.policy.start()
        load.wait_answers(20)
        mesh.audit.kill()
        wait_for(lambda: len(load.acknowledged()) > 150, 60, "decisions spooled during the outage")
        mesh.policy.kill()
        assert spool_frames(mesh.policy) > 0
        mesh.audit.start()
        mesh.policy.start()
        waiting = {a.decision_id for a in load.acknowledged()}
        drained = wait_in_trail(waiting, mesh.database_url)
        load.wait_answers(20)
    recovery = f"spool replayed {drained:.2f}s after the restarted policy was SERVING"
    assert_nothing_lost(tally("policy SIGKILLed twice, once with the spool unshipped", load, mesh.database_url,
                              recovery=recovery))  # fmt: skip
