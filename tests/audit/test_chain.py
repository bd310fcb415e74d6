"""The chain core in memory: every kind of damage is named with the first bad sequence number."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.audit.factory import events
from ztmesh.audit.chain import (
    ChainHead,
    Checkpoint,
    CheckpointKind,
    Problem,
    extend,
    verify_records,
)
from ztmesh.audit.record import AuditRecord
from ztmesh.audit.signing import LocalMlDsaSigner

NOW = "2025-03-01T10:00:00.000000Z"


def chain(n: int = 10) -> list[AuditRecord]:
    return extend(ChainHead(), events(n), NOW, "spiffe://ztmesh.local/ns/ztmesh/sa/policy")


def checkpoint(records: list[AuditRecord], at: int, signer: LocalMlDsaSigner) -> Checkpoint:
    return Checkpoint(f"cp-{at}", CheckpointKind.HEAD, at, records[at - 1].hash, NOW, signer.key_id,
                      signer.algorithm).signed(signer)  # fmt: skip


def test_extend_links_every_record() -> None:
    records = chain(5)
    assert [r.sequence for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == bytes(32)
    assert all(b.prev_hash == a.hash for a, b in zip(records, records[1:], strict=False))
    more = extend(ChainHead(5, records[-1].hash, NOW), events(2), "2000-01-01T00:00:00.000000Z", "")
    assert [r.sequence for r in more] == [6, 7]
    assert more[0].recorded_at == NOW  # a clock stepping back never makes recorded_at go backwards


def altered(records: list[AuditRecord]) -> list[AuditRecord]:
    r = records[3]
    return [*records[:3], replace(r, event=replace(r.event, details='{"i":999}')), *records[4:]]


def swapped(records: list[AuditRecord]) -> list[AuditRecord]:
    a, b = records[5], records[6]
    return [*records[:5], replace(b, sequence=6), replace(a, sequence=7), *records[7:]]


def relinked(records: list[AuditRecord]) -> list[AuditRecord]:
    r = records[4]
    forged = replace(r, event=replace(r.event, subject="mallory"))
    forged = replace(forged, hash=forged.computed_hash())  # rehashed, but record 6 still links to the old hash
    return [*records[:4], forged, *records[5:]]


TAMPERING = [
    ("altered content", altered, 4, Problem.HASH_MISMATCH),
    ("deleted record", lambda rs: rs[:2] + rs[3:], 3, Problem.GAP),
    ("deleted first record", lambda rs: rs[1:], 1, Problem.GAP),
    ("swapped records", swapped, 6, Problem.REORDERED),
    ("altered and rehashed", relinked, 6, Problem.PREV_HASH_MISMATCH),
    ("duplicated record", lambda rs: rs[:4] + [rs[3]] + rs[4:], 4, Problem.DUPLICATE),
]


@pytest.mark.parametrize(("damage", "first_bad", "problem"), [t[1:] for t in TAMPERING], ids=[t[0] for t in TAMPERING])
def test_tampering_is_found(damage, first_bad: int, problem: Problem) -> None:
    report = verify_records(damage(chain()), first_kept=min(r.sequence for r in damage(chain())))
    assert not report.ok
    assert (report.first_bad_sequence, report.problem) == (first_bad, problem)
    assert str(first_bad) in report.detail


def test_intact_chain_with_checkpoints(signer: LocalMlDsaSigner) -> None:
    records = chain()
    report = verify_records(records, checkpoints=[checkpoint(records, 4, signer)], verifier=signer, head_sequence=10)
    assert report.ok and report.records_checked == 10 and report.checkpoints_checked == 1


def test_forged_checkpoint_signature(signer: LocalMlDsaSigner) -> None:
    records = chain()
    good = checkpoint(records, 4, signer)
    forged = replace(checkpoint(records, 7, signer), head_hash=bytes(32))  # claims another head, old signature
    report = verify_records(records, checkpoints=[good, forged], verifier=signer, head_sequence=10)
    assert (report.ok, report.first_bad_sequence, report.problem) == (False, 7, Problem.CHECKPOINT_SIGNATURE)


def test_signature_by_another_key_is_refused(signer: LocalMlDsaSigner) -> None:
    records = chain()
    stranger = LocalMlDsaSigner.generate(signer.key_id)
    report = verify_records(records, checkpoints=[checkpoint(records, 5, stranger)], verifier=signer)
    assert (report.first_bad_sequence, report.problem) == (5, Problem.CHECKPOINT_SIGNATURE)


def test_rewritten_chain_contradicts_a_signed_checkpoint(signer: LocalMlDsaSigner) -> None:
    records = chain()
    cp = checkpoint(records, 8, signer)
    rewritten = extend(ChainHead(), [r.event for r in records], NOW, "someone-else")  # a fully consistent forgery
    report = verify_records(rewritten, checkpoints=[cp], verifier=signer)
    assert (report.first_bad_sequence, report.problem) == (8, Problem.CHECKPOINT_MISMATCH)


def test_truncated_tail_is_found_by_a_later_checkpoint(signer: LocalMlDsaSigner) -> None:
    records = chain()
    cp = checkpoint(records, 9, signer)
    report = verify_records(records[:6], checkpoints=[cp], verifier=signer, head_sequence=6)
    assert (report.first_bad_sequence, report.problem) == (7, Problem.TRUNCATED)
