"""Attack class: rewriting, truncating or wiping the audit log behind the service's back.

A database superuser (triggers off) can rebuild the whole log consistently — chain, tree and all —
and drop the checkpoints they cannot re-sign. Before the transparency log, `verify` then said "chain
intact" (a rewrite with re-signed checkpoints, a tail cut together with its checkpoint). Now a
checkpoint held outside the database — the witness directory, or a note an auditor kept — makes each
of these a loud failure, on SQLite and on real PostgreSQL, and the witness refuses to sign off on
the forged history.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from tests.audit.factory import POLICY, Backend, Clock, events
from ztmesh.audit import merkle, note
from ztmesh.audit.chain import ChainHead, Problem, extend_with_leaves
from ztmesh.audit.checkpoint_keys import local_note_keys
from ztmesh.audit.offline import verify_offline
from ztmesh.audit.record import make_event
from ztmesh.audit.signing import LocalMlDsaSigner
from ztmesh.audit.store import QueryFilter, record_params
from ztmesh.audit.trail import AuditTrail, verify_store
from ztmesh.audit.witness import DirectoryWitness
from ztmesh.mesh.auditing import uuid7

ORIGIN = "ztmesh.local/audit"
COLUMNS = (
    "sequence, recorded_at, event_id, time, service, emitter, caller, subject, action, resource, outcome, "
    "decision_id, trace_id, details, masked, prev_hash, hash"
)


@pytest.fixture
def logged(backend: Backend, tmp_path: Path) -> tuple[AuditTrail, str, list]:
    """A log of 40 records with a checkpoint every 10, each witnessed; the size-20 note kept aside."""
    signer = LocalMlDsaSigner.generate("audit-local")
    keys = local_note_keys(ORIGIN, tmp_path / "note.key", signer)
    clock = Clock(datetime(2026, 11, 30, 12, tzinfo=UTC))
    witness = DirectoryWitness(tmp_path / "witness", keys.verifiers)
    trail = AuditTrail(backend.store(clock), signer, signer, clock=clock, note_keys=keys, origin=ORIGIN,
                       witness=witness)  # fmt: skip
    batch = events(40)
    for start in range(0, 40, 10):
        trail.append(batch[start : start + 10], POLICY)
        trail.checkpoint()
    kept = trail.checkpoint_at(20)
    assert kept is not None and trail.verify().ok
    (tmp_path / "held-20.note").write_text(kept.note)
    (tmp_path / "checkpoint.pem").write_bytes(signer.public_pem())
    return trail, kept.note, batch


def rebuild_forged_log(backend: Backend, trail: AuditTrail, batch: list) -> None:
    """What a superuser can do without the signing keys: rewrite record 5, recompute every hash and the
    whole Merkle tree so the database is self-consistent, and drop the checkpoints it cannot re-sign."""
    stored = trail.store.query(QueryFilter(newest_first=False), 0, 100)
    original = stored[4].event
    forged_event = make_event(
        event_id=original.event_id, time=datetime.fromisoformat(original.time.replace("Z", "+00:00")),
        service=original.service, action=original.action, outcome="ALLOW", caller=original.caller,
        subject=original.subject, resource=original.resource, decision_id=original.decision_id,
        details={"i": 4, "rewritten": True},
    )  # fmt: skip
    forged_events = [r.event for r in stored]
    forged_events[4] = forged_event
    records, leaves = extend_with_leaves(ChainHead(), forged_events, stored[0].recorded_at, stored[0].emitter)
    tree = merkle.MemoryNodes()
    tree.append(leaves)
    mark = "?" if backend.kind == "sqlite" else "%s"
    backend.tamper(
        "DELETE FROM audit_records", f"DELETE FROM {backend.tree_table}", "DELETE FROM audit_checkpoints",
        *[(f"INSERT INTO audit_records ({COLUMNS}) VALUES ({', '.join([mark] * 17)})", record_params(r))
          for r in records],
        *backend.tree_inserts(tree.nodes),
    )  # fmt: skip


def test_a_consistent_rewrite_is_caught_by_the_witness_and_by_a_held_checkpoint(
    backend: Backend, logged, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trail, held, batch = logged
    rebuild_forged_log(backend, trail, batch)
    # The database alone is now self-consistent: this is exactly why checkpoints must live elsewhere.
    assert verify_store(trail.store, trail.verifier).ok
    report = trail.verify()  # consults the witness directory
    assert (report.ok, report.problem, report.first_bad_sequence) == (False, Problem.TREE_MISMATCH, 40)
    assert "witnessed checkpoint" in report.detail and "rewritten" in report.detail
    # A note an auditor kept at size 20 pins the damage further back.
    held_head = trail.open_checkpoint(held)
    report = trail.verify(witnessed=[("the auditor's checkpoint", held_head)])
    assert (report.ok, report.problem, report.first_bad_sequence) == (False, Problem.TREE_MISMATCH, 20)
    # Offline, straight from the database, with the note file: the same verdict (`audit verify --checkpoint`).
    offline = verify_offline(backend.dsn, [tmp_path / "checkpoint.pem"], checkpoints=[held])
    assert (offline.ok, offline.problem, offline.first_bad_sequence) == (False, Problem.TREE_MISMATCH, 20)
    # The witness will not accept a checkpoint of the forged history.
    before = (tmp_path / "witness" / "latest").read_text()
    trail.append(events(1), POLICY)
    with caplog.at_level(logging.CRITICAL, logger="ztmesh.audit.trail"):
        assert trail.checkpoint() is not None
    assert "REFUSED" in caplog.text and "rewritten" in caplog.text
    assert (tmp_path / "witness" / "latest").read_text() == before


@pytest.mark.parametrize("keep", [30, 0], ids=["tail truncated", "wiped"])
def test_truncation_and_wipe_are_caught(backend: Backend, logged, tmp_path: Path, keep: int) -> None:
    trail, held, _ = logged
    backend.tamper(
        f"DELETE FROM audit_records WHERE sequence > {keep}", f"DELETE FROM audit_checkpoints WHERE sequence > {keep}"
    )
    report = trail.verify()
    assert (report.ok, report.problem) == (False, Problem.TRUNCATED)
    assert "records" in report.detail and "were removed" in report.detail
    offline = verify_offline(backend.dsn, [tmp_path / "checkpoint.pem"], checkpoints=[held])
    assert offline.ok is (keep >= 20)  # the size-20 note catches only what reaches back past it
    if keep < 20:
        assert offline.problem is Problem.TRUNCATED


def test_a_checkpoint_signed_by_another_key_is_no_checkpoint(backend: Backend, logged, tmp_path: Path) -> None:
    """Someone with their own keys can sign a note for any tree; no verifier of this log accepts it."""
    trail, _, _ = logged
    mallory = [
        note.LocalNoteSigner(ORIGIN, ed25519.Ed25519PrivateKey.generate()),
        note.LocalNoteSigner(ORIGIN, mldsa.MLDSA65PrivateKey.generate()),
    ]
    forged = note.sign(note.TreeHead(ORIGIN, 40, bytes(32)).text(), mallory)
    with pytest.raises(Exception, match="no signature by a trusted key"):
        trail.open_checkpoint(forged)
    with pytest.raises(Exception, match="does not verify"):
        verify_offline(backend.dsn, [tmp_path / "checkpoint.pem"], checkpoints=[forged])


def test_a_forged_checkpoint_row_is_neither_served_nor_holds_back_signing(backend: Backend, logged) -> None:
    """The service's database role may INSERT checkpoint rows; without the key it cannot sign them."""
    trail, _, _ = logged
    real = trail.latest_checkpoint()
    assert real is not None and real.sequence == 40
    forged = dataclasses.replace(real, checkpoint_id=uuid7(), sequence=1_000_000, signature=b"\0" * 3309)
    trail.store.add_checkpoint(forged)  # as the service role could
    restarted = AuditTrail(trail.store, trail.signer, trail.verifier, note_keys=trail.note_keys, origin=ORIGIN)
    assert restarted.latest_checkpoint() == real and restarted.checkpoint_at() == real
    restarted.append(events(2), POLICY)
    signed = restarted.checkpoint()
    assert signed is not None and signed.sequence == 42  # not held back until sequence 1,000,000
    report = restarted.verify()
    assert (report.ok, report.problem) == (False, Problem.CHECKPOINT_SIGNATURE)  # and verify names the forgery


def test_deleting_the_tree_does_not_switch_its_checks_off(backend: Backend, logged) -> None:
    """Rewrite records 5.. behind an intact record 4 (as behind a prune anchor), drop the checkpoints
    and every tree node: the witnessed root must still be checked, not skipped for want of nodes."""
    trail, _, _ = logged
    stored = trail.store.query(QueryFilter(newest_first=False), 0, 100)
    forged_events = [r.event for r in stored[4:]]
    forged_events[0] = dataclasses.replace(forged_events[0], outcome="ALLOW", details='{"rewritten":true}')
    anchor = ChainHead(4, stored[3].hash, stored[3].recorded_at)
    records, _ = extend_with_leaves(anchor, forged_events, stored[4].recorded_at, stored[4].emitter)
    mark = "?" if backend.kind == "sqlite" else "%s"
    backend.tamper(
        "DELETE FROM audit_records WHERE sequence > 4", f"DELETE FROM {backend.tree_table}",
        "DELETE FROM audit_checkpoints",
        *[(f"INSERT INTO audit_records ({COLUMNS}) VALUES ({', '.join([mark] * 17)})", record_params(r))
          for r in records],
    )  # fmt: skip
    report = trail.verify(from_sequence=5)
    assert (report.ok, report.problem) == (False, Problem.TREE_MISMATCH)
    assert "tree before record 5 is gone" in report.detail
