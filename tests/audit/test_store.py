"""The trail on a real database (SQLite and PostgreSQL): idempotent append, queries, tamper detection by
Verify and by the offline verifier, append-only enforcement, retention, and bad input."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from tests.audit.factory import POLICY, Backend, Clock, event, events
from ztmesh.audit.chain import Problem
from ztmesh.audit.errors import AppendOnlyViolation, BatchTooLarge, DuplicateInBatch, InvalidEvent, InvalidQuery
from ztmesh.audit.offline import verify_database, verify_offline
from ztmesh.audit.signing import LocalMlDsaSigner
from ztmesh.audit.store import QueryFilter
from ztmesh.audit.trail import AuditTrail, TrailSettings


def make_trail(
    backend: Backend,
    signer: LocalMlDsaSigner,
    clock: Clock | None = None,
    min_retention: timedelta | None = None,
    **settings,
) -> AuditTrail:
    clock = clock or Clock()
    store = backend.store(clock, **({"min_retention": min_retention} if min_retention else {}))
    return AuditTrail(store, signer, signer, TrailSettings(**{"checkpoint_every": 25, **settings}), clock)


def test_append_is_idempotent_by_event_id(backend: Backend, signer: LocalMlDsaSigner) -> None:
    trail = make_trail(backend, signer)
    batch = events(10)
    first = trail.append(batch, POLICY)
    assert [r.sequence for r in first] == list(range(1, 11)) and not any(r.duplicate for r in first)
    retried = trail.append(batch[5:] + events(2, start=100), POLICY)  # a retry overlapping new events
    expected = [(s, True) for s in range(6, 11)] + [(11, False), (12, False)]
    assert [(r.sequence, r.duplicate) for r in retried] == expected
    again = trail.append(batch[:1] + batch[:1], POLICY)  # the same event twice in one batch
    assert [(r.sequence, r.duplicate) for r in again] == [(1, True), (1, True)]
    assert trail.store.bounds() == (1, 12)
    assert trail.verify().ok


def test_same_id_with_other_content_is_refused(backend: Backend, signer: LocalMlDsaSigner) -> None:
    trail = make_trail(backend, signer)
    original = event(1)
    trail.append([original])
    impostor = event(2, event_id=original.event_id)
    with pytest.raises(InvalidEvent, match="different contents"):
        trail.append([impostor, event(3)])
    twin = event(4)
    with pytest.raises(DuplicateInBatch):
        trail.append([twin, event(5), event(6, event_id=twin.event_id)])  # one id, two contents, one batch
    assert trail.store.bounds() == (1, 1)  # nothing of the refused batches was stored


def test_query_filters_order_and_paging(backend: Backend, signer: LocalMlDsaSigner) -> None:
    trail = make_trail(backend, signer)
    trail.append(events(60), POLICY)
    where = QueryFilter(subject="user-2", outcome="ALLOW")
    expected = [i + 1 for i in range(60) if i % 5 == 2 and i % 3]
    seen, token = [], ""
    while True:
        page = trail.query(where, token, page_size=3)
        seen += [r.sequence for r in page.records]
        token = page.next_token
        if not token:
            break
    assert seen == sorted(expected, reverse=True)
    oldest = trail.query(QueryFilter(action="decide", newest_first=False), page_size=5)
    assert [r.sequence for r in oldest.records] == [1, 2, 3, 4, 5]
    record = oldest.records[0]
    assert record.event.details_object()["client_ip"] == "10.1.0.0" and record.event.masked == ("/client_ip",)
    assert record.emitter == POLICY and record.computed_hash() == record.hash
    with pytest.raises(InvalidQuery):
        trail.query(QueryFilter(subject="other"), token or page_token_of(trail), page_size=3)


def page_token_of(trail: AuditTrail) -> str:
    return trail.query(QueryFilter(), page_size=1).next_token


def test_query_by_event_time_range(backend: Backend, signer: LocalMlDsaSigner) -> None:
    trail = make_trail(backend, signer)
    base = Clock().now - timedelta(hours=10)
    trail.append([event(i, time=base + timedelta(hours=i)) for i in range(10)])
    page = trail.query(QueryFilter(start=base + timedelta(hours=3), end=base + timedelta(hours=6)))
    assert sorted(r.sequence for r in page.records) == [4, 5, 6]


TAMPERING = [
    # (name, SQL a malicious superuser runs, first bad sequence, problem)
    ("update details", "UPDATE audit_records SET details = '{\"i\":1}' WHERE sequence = 17", 17, Problem.HASH_MISMATCH),
    ("update subject", "UPDATE audit_records SET subject = 'nobody' WHERE sequence = 33", 33, Problem.HASH_MISMATCH),
    ("delete a row", "DELETE FROM audit_records WHERE sequence = 21", 21, Problem.GAP),
    ("swap two rows", "UPDATE audit_records SET sequence = -12 WHERE sequence = 12; "
                      "UPDATE audit_records SET sequence = 12 WHERE sequence = 13; "
                      "UPDATE audit_records SET sequence = 13 WHERE sequence = -12", 12, Problem.REORDERED),
    ("delete the tail", "DELETE FROM audit_records WHERE sequence > 45", 46, Problem.TRUNCATED),
    ("forge a checkpoint signature", "UPDATE audit_checkpoints SET head_hash = prev_hash_of_30 WHERE sequence = 30",
     30, Problem.CHECKPOINT_SIGNATURE),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "first_bad", "problem"), [t[1:] for t in TAMPERING], ids=[t[0] for t in TAMPERING])
def test_tampering_is_reported_by_verify_and_offline_verify(
    backend: Backend, signer: LocalMlDsaSigner, tmp_path: Path, sql: str, first_bad: int, problem: Problem
) -> None:
    trail = make_trail(backend, signer)
    for i in range(0, 60, 10):
        trail.append(events(10, start=i), POLICY)  # checkpoints at 30 and 60
    assert trail.verify().ok
    if "prev_hash_of_30" in sql:
        sql = sql.replace("prev_hash_of_30", "(SELECT prev_hash FROM audit_records WHERE sequence = 30)")
    backend.tamper(*sql.split("; "))
    online = trail.verify()
    key = tmp_path / "checkpoints.pem"
    key.write_bytes(signer.public_pem())
    offline = verify_offline(backend.dsn, [key])
    for report in (online, offline):
        assert (report.ok, report.first_bad_sequence, report.problem) == (False, first_bad, problem), report
        assert str(first_bad) in report.detail


def test_the_trigger_refuses_changes_even_to_the_owner(backend: Backend, signer: LocalMlDsaSigner) -> None:
    trail = make_trail(backend, signer)
    trail.append(events(3), POLICY)
    trail.checkpoint()
    if backend.kind == "sqlite":
        import sqlite3

        db = sqlite3.connect(backend.dsn)
        for statement in ("UPDATE audit_records SET subject = 'x'", "DELETE FROM audit_records",
                          "UPDATE audit_checkpoints SET key_id = 'x'", "DELETE FROM audit_checkpoints"):  # fmt: skip
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)
        db.close()
    else:
        import psycopg

        with psycopg.connect(backend.dsn, autocommit=True) as conn:
            for statement in ("UPDATE audit_records SET subject = 'x'", "DELETE FROM audit_records",
                              "TRUNCATE audit_records", "UPDATE audit_checkpoints SET key_id = 'x'",
                              "DELETE FROM audit_checkpoints", "TRUNCATE audit_checkpoints"):  # fmt: skip
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                    conn.execute(statement)
    assert trail.verify().ok and trail.store.bounds() == (1, 3)


def test_service_role_may_insert_and_select_only(request: pytest.FixtureRequest, signer: LocalMlDsaSigner) -> None:
    import psycopg

    from ztmesh.audit import pg_schema
    from ztmesh.audit.store_postgres import PostgresAuditStore

    postgres = request.getfixturevalue("postgres")
    owner_dsn = postgres.new_database("audit_roles")
    postgres.create_role("audit_svc", "svc-pass")
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        pg_schema.install(conn, service_role="audit_svc")
    service_dsn = postgres.dsn_for("audit_roles", "audit_svc", "svc-pass")
    store = PostgresAuditStore(service_dsn, install=False)
    try:
        trail = AuditTrail(store, signer, signer, TrailSettings(checkpoint_every=5))
        trail.append(events(12), POLICY)
        assert trail.verify().ok
        with psycopg.connect(service_dsn, autocommit=True) as conn:
            for statement in ("UPDATE audit_records SET subject = 'x'", "DELETE FROM audit_records WHERE sequence = 1",
                              "TRUNCATE audit_records", "UPDATE audit_checkpoints SET key_id = 'x'",
                              "DELETE FROM audit_checkpoints", "DROP TABLE audit_records",
                              "ALTER TABLE audit_records DISABLE TRIGGER USER",
                              "INSERT INTO audit_meta VALUES ('min_retention', '0')"):  # fmt: skip
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        assert trail.verify().ok and store.bounds() == (1, 12)
    finally:
        store.close()


def test_concurrent_appenders_never_fork_the_chain(backend: Backend, signer: LocalMlDsaSigner) -> None:
    stores = [backend.store() for _ in range(3)]  # separate connections/handles, as separate processes have
    errors: list[BaseException] = []

    def work(store) -> None:
        try:
            for _ in range(8):
                store.append(events(5), POLICY)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    trail = AuditTrail(stores[0], signer, signer)
    assert stores[0].bounds() == (1, 120)
    assert trail.verify().ok


def test_concurrent_retries_of_the_same_events_store_each_once(backend: Backend, signer: LocalMlDsaSigner) -> None:
    """An emitter's retry may reach another audit process while its first try is being written: whichever
    writes first stores the events, the other is told they are duplicates, with the same sequences (the
    PostgreSQL store looks most ids up before taking the append lock, and the rest under it)."""
    stores = [backend.store() for _ in range(3)]
    batches = [events(25) for _ in range(12)]
    start = threading.Barrier(len(stores))
    answers: list[list] = [[] for _ in stores]
    errors: list[BaseException] = []

    def work(store, answer: list) -> None:
        try:
            start.wait()
            for batch in batches:
                answer.extend(store.append(batch, POLICY))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, a)) for s, a in zip(stores, answers, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert stores[0].bounds() == (1, 300)  # each event once
    by_id: dict[str, set[int]] = {}
    for answer in answers:
        for result in answer:
            by_id.setdefault(result.event_id, set()).add(result.sequence)
    assert len(by_id) == 300 and all(len(sequences) == 1 for sequences in by_id.values())
    assert sum(not r.duplicate for answer in answers for r in answer) == 300
    assert AuditTrail(stores[0], signer, signer).verify().ok


def test_audit_processes_sharing_a_log_sign_one_checkpoint_per_interval(
    backend: Backend, signer: LocalMlDsaSigner
) -> None:
    """Two trails on one database (two audit processes): a checkpoint is due `checkpoint_every` records
    after the log's newest one, whichever process signed it."""
    clock = Clock()
    first, second = (
        AuditTrail(backend.store(clock), signer, signer, TrailSettings(checkpoint_every=10), clock) for _ in range(2)
    )
    first.append(events(10), POLICY)  # signs at 10
    second.append(events(5), POLICY)  # 15: only 5 after the newest checkpoint
    assert [cp.sequence for cp in first.store.checkpoints()] == [10]
    second.append(events(5), POLICY)
    assert [cp.sequence for cp in first.store.checkpoints()] == [10, 20]


def test_retention_prunes_old_partitions_and_verify_still_passes(
    backend: Backend, signer: LocalMlDsaSigner, tmp_path: Path
) -> None:
    clock = Clock()
    now = clock.now
    # The owner lowered the floor below this deployment's 45-day retention (the default floor is 7 years).
    floor = timedelta(days=30)
    trail = make_trail(backend, signer, clock, floor, retention=timedelta(days=45), checkpoint_every=1000)
    for days_ago in (150, 120, 90, 60, 2):
        clock.now = now - timedelta(days=days_ago)
        trail.append(events(10), POLICY)
        trail.checkpoint()
    clock.now = now
    first_kept_before = trail.store.bounds()[0]
    result = trail.prune()
    assert result is not None and result.records_dropped > 0
    first, last = trail.store.bounds()
    assert first > first_kept_before and last == 50
    assert first == result.checkpoint.pruned_through_sequence + 1
    old = [r for r in trail.query(QueryFilter(newest_first=False), page_size=100).records]
    assert all(r.sequence >= first for r in old)
    key = tmp_path / "k.pem"
    key.write_bytes(signer.public_pem())
    assert trail.verify().ok and verify_offline(backend.dsn, [key]).ok
    trail.append(events(3), POLICY)  # the chain goes on from the pruned state
    assert trail.verify().ok
    assert trail.prune() is None  # nothing else is old enough
    backend.tamper(f"DELETE FROM audit_records WHERE sequence = {first}")  # damage after pruning is still found
    report = trail.verify()
    assert (report.ok, report.first_bad_sequence) == (False, first)


def test_pruning_without_a_checkpoint_is_refused(backend: Backend, signer: LocalMlDsaSigner) -> None:
    clock = Clock(Clock().now - timedelta(days=200))
    store = backend.store(clock, min_retention=timedelta(days=30))
    store.append(events(5), POLICY)
    clock.advance(days=200)
    plan = store.plan_prune(clock.now - timedelta(days=60))
    assert plan is not None
    with pytest.raises(AppendOnlyViolation):
        store.prune(plan)  # no PRUNE checkpoint stored: the database itself says no
    assert store.bounds() == (1, 5)


BAD_BATCHES = [
    ("oversized details", lambda: [event(1), event(2, details={"blob": "x" * 70_000})], InvalidEvent),
    ("invalid UTF-8 details", lambda: [event(1), event(2, details=b'{"a":"\xc3\x28"}')], InvalidEvent),
    ("missing action", lambda: [event(1), event(2, action="")], InvalidEvent),
    ("missing time", lambda: [event(1), event(2, time=None)], InvalidEvent),
]


@pytest.mark.parametrize(("build", "error"), [b[1:] for b in BAD_BATCHES], ids=[b[0] for b in BAD_BATCHES])
def test_bad_input_stores_nothing(backend: Backend, signer: LocalMlDsaSigner, build, error) -> None:
    trail = make_trail(backend, signer)
    with pytest.raises(error) as caught:
        trail.append(build(), POLICY)  # validation happens while the batch is built
    assert "event" in str(caught.value)
    assert trail.store.bounds() == (0, 0)
    trail.append(events(2), POLICY)  # and the trail keeps working
    assert trail.verify().ok


def test_batch_limit(backend: Backend, signer: LocalMlDsaSigner) -> None:
    trail = make_trail(backend, signer, max_batch=5)
    with pytest.raises(BatchTooLarge, match="at most 5"):
        trail.append(events(6), POLICY)
    assert trail.store.bounds() == (0, 0)


def test_offline_verify_needs_no_writable_database(backend: Backend, signer: LocalMlDsaSigner) -> None:
    trail = make_trail(backend, signer)
    trail.append(events(30), POLICY)
    report = verify_database(backend.dsn, signer)
    assert report.ok and report.records_checked == 30 and report.checkpoints_checked == 1


def test_processes_starting_together_on_an_empty_database_install_once(request: pytest.FixtureRequest) -> None:
    from ztmesh.audit.store_postgres import PostgresAuditStore

    dsn = request.getfixturevalue("postgres").new_database("audit_race")
    errors: list[BaseException] = []
    opened = []

    def start() -> None:
        try:
            opened.append(PostgresAuditStore(dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for store in opened:
        store.append(events(2), POLICY)
        store.close()


def test_migrate_command_installs_the_schema_for_a_restricted_role(request: pytest.FixtureRequest) -> None:
    import subprocess
    import sys

    from ztmesh.audit.store_postgres import PostgresAuditStore

    postgres = request.getfixturevalue("postgres")
    owner = postgres.new_database("audit_migrate")
    postgres.create_role("audit_cli_svc", "pw")
    done = subprocess.run(
        [sys.executable, "-m", "ztmesh.cli", "audit", "migrate", "--dsn", owner, "--grant", "audit_cli_svc"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "INSERT and SELECT" in done.stdout
    store = PostgresAuditStore(postgres.dsn_for("audit_migrate", "audit_cli_svc", "pw"), install=False)
    assert [r.sequence for r in store.append(events(2), POLICY)] == [1, 2]
    store.close()
