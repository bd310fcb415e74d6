"""One flipped bit in frame 50 of a spool segment, found when the policy service restarts after a crash:
that frame is set aside and reported (error log naming segment and frame, a metric, the bytes in
`corrupt/`, an `audit.spool_damaged` record in the trail), and every frame after it still ships."""

from __future__ import annotations

import re
from collections.abc import Callable

import psycopg

from tests.faults.support import FaultMesh, assert_nothing_lost, tally, wait_for, wait_in_trail
from ztmesh.audit.spoolfile import _scan


def test_a_corrupt_frame_is_set_aside_loudly_and_the_frames_after_it_ship(
    fault_mesh: Callable[..., FaultMesh],
) -> None:
    mesh = fault_mesh()
    slot = mesh.policy.data_dir / "spool" / "policy" / "0"
    with mesh.load(clients=2, rate=25) as load:
        load.wait_answers(10)
        mesh.audit.kill()
        wait_for(lambda: len(load.acknowledged()) > 200, 60, "decisions spooled during the outage")
        mesh.policy.kill()  # a crash with hundreds of decisions spooled and not shipped
    segment = max(slot.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    frames = list(_scan(bytes(data)))
    assert len(frames) > 100
    start, end, payload = frames[50]
    assert payload is not None
    decision = re.search(rb'"decision_id":"([0-9a-f-]{36})"', payload)
    assert decision is not None
    data[start + 20] ^= 0x04  # one bit, inside the event id of frame 50
    segment.write_bytes(bytes(data))

    lost_frame = frozenset({decision[1].decode()})
    mesh.audit.start()
    mesh.policy.start()
    shipped = wait_in_trail({a.decision_id for a in load.acknowledged()} - lost_frame, mesh.database_url)
    quarantined = wait_for(lambda: list((slot / "corrupt").glob("*.bin")), 30, "the damaged frame set aside")
    assert quarantined[0].read_bytes() == bytes(data[start:end])
    log = wait_for(lambda: "frame 50" in mesh.policy.tail(200) and mesh.policy.tail(200), 30, "the error log")
    assert re.search(r'"level": "ERROR".*segment 1 frame 50 ', log), log
    query = "SELECT details FROM audit_records WHERE action = 'audit.spool_damaged'"
    with psycopg.connect(mesh.database_url, autocommit=True) as conn:
        damage = wait_for(lambda: conn.execute(query).fetchall(), 30, "the damage on record in the trail")
    assert '"frame":50' in damage[0][0]
    result = tally("spool frame 50 bit-flipped, policy restarted", load, mesh.database_url, set_aside=lost_frame,
                   recovery=f"the other frames shipped {shipped:.2f}s after policy was SERVING")  # fmt: skip
    assert_nothing_lost(result)
