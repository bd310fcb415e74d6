"""The policy and audit certificates re-issued (cert-manager rotation) several times under load: both
services pick the new files up, the spool keeps shipping, nothing acknowledged is lost."""

from __future__ import annotations

from collections.abc import Callable

from tests.faults.support import FaultMesh, assert_nothing_lost, tally, wait_in_trail
from tests.support.mesh import make_pki


def test_certificates_reissued_under_load_lose_no_decision(fault_mesh: Callable[..., FaultMesh], tmp_path) -> None:
    pki = make_pki(tmp_path / "own-pki")  # re-issuing in the shared PKI would change other tests' files
    mesh = fault_mesh(pki=pki)
    with mesh.load(clients=2, rate=25) as load:
        load.wait_answers(30)
        for _round in range(3):
            pki.issue("policy")
            pki.issue("audit")
            load.wait_answers(60)  # a few seconds: past the services' look at their certificate files
        wait_in_trail({a.decision_id for a in load.acknowledged()}, mesh.database_url)
    failed = [a for a in load.answers if a.error]
    assert not failed, failed[:3]
    assert_nothing_lost(tally("policy + audit certificates re-issued 3x", load, mesh.database_url, recovery="-"))
