"""Two policy processes spool into slots 0 and 1 during an audit outage and crash; the service comes back
with one process (ZTMESH_PROCESSES lowered from 2 to 1). Slot 1 has no owner any more: the live process
takes its lock and drains it, so no acknowledged decision waits for a second process that never comes."""

from __future__ import annotations

from collections.abc import Callable

from tests.faults.support import FaultMesh, Load, Service, assert_nothing_lost, tally, wait_for, wait_in_trail


def test_a_slot_no_process_claims_is_drained_by_a_live_one(fault_mesh: Callable[..., FaultMesh]) -> None:
    mesh = fault_mesh()
    # The second process of a two-process service: same data folder, its own port here so that the load
    # reaches both for certain (SO_REUSEPORT would spread connections by hash).
    second = Service("policy", mesh.pki, mesh.policy.data_dir, dict(mesh.policy.env)).start()
    slots = mesh.policy.data_dir / "spool" / "policy"
    try:
        with mesh.load(clients=2, rate=25) as first_load, Load(mesh.pki, second, clients=2, rate=25) as second_load:
            first_load.wait_answers(10)
            mesh.audit.kill()
            wait_for(lambda: len(second_load.acknowledged()) > 100, 60, "decisions spooled in slot 1")
            mesh.policy.kill()
            second.kill()
        assert sorted(p.name for p in slots.iterdir()) == ["0", "1"]
        mesh.audit.start()
        mesh.policy.start()  # one process now: it holds slot 0, nobody holds slot 1
        in_slot_1 = {a.decision_id for a in second_load.acknowledged()}
        drained = wait_in_trail(in_slot_1, mesh.database_url)
    finally:
        second.close()
    assert "adopted unclaimed slot" in mesh.policy.tail(100)
    result = tally("ZTMESH_PROCESSES 2 -> 1 after a crash in an outage", second_load, mesh.database_url,
                   recovery=f"slot 1 drained {drained:.2f}s after the lone process was SERVING")  # fmt: skip
    assert_nothing_lost(result)
    assert_nothing_lost(tally("  (the process that kept slot 0)", first_load, mesh.database_url, recovery="-"))
