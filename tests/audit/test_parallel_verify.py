"""The parallel verifier answers exactly what the single-process one does, on SQLite and PostgreSQL: an
intact log, one pruned so the walk starts inside a subtree, and each kind of damage in a later stretch
(other processes' share), with checkpoints' tree roots and witnessed heads checked across stretches."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from tests.audit.factory import POLICY, Backend, Clock, event, events, verifiable_trail
from ztmesh.audit import merkle, note
from ztmesh.audit.chain import Problem
from ztmesh.audit.parallel_verify import default_workers, verify_store_parallel, workers_for
from ztmesh.audit.signing import LocalMlDsaSigner
from ztmesh.audit.trail import AuditTrail, verify_store

SMALL = {"workers": 2, "bits": 3, "min_parallel": 1}  # subtrees of 8 records, every range in 2 processes


def _both(trail: AuditTrail, signer: LocalMlDsaSigner, **kwargs) -> tuple:
    serial = verify_store(trail.store, signer, **kwargs)
    parallel = verify_store_parallel(trail.store, signer, **kwargs, **SMALL)
    return serial, parallel


def test_intact_and_pruned_logs_agree(backend: Backend, signer: LocalMlDsaSigner) -> None:
    clock = Clock()
    now = clock.now
    trail = verifiable_trail(backend, signer, clock)
    clock.now = now - timedelta(days=90)
    for _ in range(3):
        trail.append(events(7), POLICY)
    clock.now = now
    for _ in range(8):
        trail.append(events(7), POLICY)
    serial, parallel = _both(trail, signer)
    assert serial.ok and parallel == serial and parallel.records_checked == 77
    assert trail.prune() is not None  # records 1..21 go: the walk now starts inside the subtree 16..23
    assert trail.store.bounds() == (22, 77)
    serial, parallel = _both(trail, signer)
    assert serial.ok and parallel == serial and parallel.records_checked == 56
    held = note.TreeHead("ztmesh.local/audit", 60, merkle.tree_root(60, trail.store))
    serial = verify_store(trail.store, signer, witnessed=[("the witness", held)])
    parallel = verify_store_parallel(trail.store, signer, witnessed=[("the witness", held)], **SMALL)
    assert serial.ok and parallel == serial
    forged = replace(held, root=bytes(32))
    serial = verify_store(trail.store, signer, witnessed=[("the witness", forged)])
    parallel = verify_store_parallel(trail.store, signer, witnessed=[("the witness", forged)], **SMALL)
    assert (serial.problem, serial.first_bad_sequence) == (Problem.TREE_MISMATCH, 60) and parallel == serial


DAMAGE = [
    ("altered record", "UPDATE audit_records SET subject = 'mallory' WHERE sequence = 50", Problem.HASH_MISMATCH),
    ("deleted record", "DELETE FROM audit_records WHERE sequence = 41", Problem.GAP),
    ("deleted stretch end", "DELETE FROM audit_records WHERE sequence = 40", Problem.GAP),  # stretches 1-40, 41-84
    ("rewritten tree", "UPDATE audit_checkpoints SET tree_root = head_hash WHERE sequence = 63", Problem.TREE_MISMATCH),
]


def _damaged_agree(backend: Backend, signer: LocalMlDsaSigner, statement: str, problem: Problem) -> None:
    trail = verifiable_trail(backend, signer)
    for _ in range(12):
        trail.append(events(7), POLICY)
    backend.tamper(statement)
    serial = verify_store(trail.store, None)  # no signature check: the tree root itself must be caught
    parallel = verify_store_parallel(trail.store, None, **SMALL)
    assert (serial.ok, serial.problem) == (False, problem) and parallel == serial


@pytest.mark.parametrize(("statement", "problem"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_damage_in_another_processes_stretch_is_reported_the_same(
    tmp_path: Path, signer: LocalMlDsaSigner, statement: str, problem: Problem
) -> None:
    backend = Backend("sqlite", str(tmp_path / "audit.db"))
    try:
        _damaged_agree(backend, signer, statement, problem)
    finally:
        backend.close()


def test_damage_read_from_postgresql_is_reported_the_same(
    request: pytest.FixtureRequest, signer: LocalMlDsaSigner
) -> None:
    backend = Backend("postgres", request.getfixturevalue("postgres").new_database("audit_parallel_damage"))
    try:
        _damaged_agree(backend, signer, DAMAGE[0][1], DAMAGE[0][2])
    finally:
        backend.close()


def test_postgresql_assembles_each_record_exactly(request: pytest.FixtureRequest, signer: LocalMlDsaSigner) -> None:
    """A worker's fast walk accepts records read from PostgreSQL that need every kind of JSON and COPY
    escaping (it falls back to the exact walk only on doubt), and its subtree roots are the tree's."""
    from ztmesh.audit.parallel_verify import _Share, _walk_stretch

    backend = Backend("postgres", request.getfixturevalue("postgres").new_database("audit_parallel_bytes"))
    try:
        trail = verifiable_trail(backend, signer)
        odd = [
            event(i, subject='o"brien\\', resource="patient/ü/😀", details={"note": 'a\nb\t"c"\\ \u0001 ü 😀'})
            for i in range(6)
        ]
        trail.append(events(5) + odd + events(5), POLICY)
        stretch = _walk_stretch(backend.dsn, _Share(1, 16, bytes(32), {}, [], [16], 3))
        assert stretch.failure is None and stretch.count == 16
        assert len(stretch.chunk_roots) == 2  # two subtrees of 8, whose parent is the tree of 16
        assert merkle.node_hash(*stretch.chunk_roots) == merkle.tree_root(16, trail.store)
    finally:
        backend.close()


def test_workers_follow_the_cpu_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cores = default_workers(tmp_path / "absent")
    for text, expected in (("max 100000", cores), ("50000 100000", 1), ("100000 100000", 1), ("800000 100000", cores)):
        cpu_max.write_text(text + "\n")
        assert default_workers(cpu_max) == min(expected, cores)


def test_a_postgresql_on_this_host_gets_half_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its backends send each worker its rows at about the CPU the worker spends on them."""
    monkeypatch.setattr("ztmesh.audit.parallel_verify.default_workers", lambda: 4)
    local = ["postgresql://audit:pw@127.0.0.1:5432/audit", "postgresql://localhost/audit", "dbname=audit",
             "host=/var/run/postgresql dbname=audit", "postgresql://[::1]:5432/audit"]  # fmt: skip
    for address in local:
        assert workers_for(address) == 2, address
    for elsewhere in ("postgresql://audit@postgres.ztmesh.svc:5432/audit", "host=10.0.0.7 dbname=audit",
                      "postgresql://a@127.0.0.1,db.example:5432/audit", "/data/audit.db", None):  # fmt: skip
        assert workers_for(elsewhere) == 4, elsewhere
