"""Attack: the audit service's own database role tries to make retention drop records it must keep, by
inserting an unsigned PRUNE row and calling the drop function itself. The floor the owner set refuses
it whatever rows exist; once the owner lowers the floor, pruning works and what is kept stays provable."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from tests.audit.factory import POLICY, Clock, events
from ztmesh.audit import merkle, pg_schema
from ztmesh.audit.chain import Checkpoint, Problem
from ztmesh.audit.errors import AppendOnlyViolation, PruneRefused
from ztmesh.audit.signing import LocalMlDsaSigner
from ztmesh.audit.store import CHECKPOINT_COLUMNS, PrunePlan, QueryFilter
from ztmesh.audit.store_postgres import PostgresAuditStore
from ztmesh.audit.store_sqlite import SqliteAuditStore
from ztmesh.audit.trail import AuditTrail, TrailSettings

FORGED_PRUNE = (
    f"INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS}) VALUES "
    "(%s, 'prune', 1000000, '\\x00', now(), 'attacker', 1, 'none', 1000000, '\\x00', now(), '', '', '')"
)

_databases = itertools.count(1)


@pytest.fixture(scope="module")
def signer() -> LocalMlDsaSigner:
    return LocalMlDsaSigner.generate("audit-retention-test")


@dataclass
class ServiceTrail:
    owner_dsn: str
    service_dsn: str
    store: PostgresAuditStore
    trail: AuditTrail
    clock: Clock
    checkpoint: Checkpoint  # signed over all 25 records


@pytest.fixture
def service_trail(request: pytest.FixtureRequest, signer: LocalMlDsaSigner) -> Iterator[ServiceTrail]:
    """A trail written by the service's own role (INSERT and SELECT only) under the default 7-year floor:
    20 records four months old, 5 of today; the service's retention is 45 days."""
    postgres = request.getfixturevalue("postgres")
    name = f"audit_rb_{next(_databases)}"
    owner_dsn = postgres.new_database(name)
    role = f"{name}_svc"
    postgres.create_role(role, "rb-pass")
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        pg_schema.install(conn, service_role=role)
    service_dsn = postgres.dsn_for(name, role, "rb-pass")
    clock = Clock()
    now = clock.now
    store = PostgresAuditStore(service_dsn, clock=clock, install=False)
    try:
        settings = TrailSettings(checkpoint_every=1000, retention=timedelta(days=45))
        trail = AuditTrail(store, signer, signer, settings, clock)
        clock.now = now - timedelta(days=120)
        trail.append(events(20), POLICY)
        trail.checkpoint()
        clock.now = now
        trail.append(events(5), POLICY)
        checkpoint = trail.checkpoint()
        assert checkpoint is not None and store.bounds() == (1, 25)
        yield ServiceTrail(owner_dsn, service_dsn, store, trail, clock, checkpoint)
    finally:
        store.close()


def test_service_role_cannot_prune_inside_the_owners_floor(service_trail: ServiceTrail) -> None:
    store, now = service_trail.store, service_trail.clock.now
    # The attack, as the service's role: a forged prune row covering everything, then the drop itself.
    with psycopg.connect(service_trail.service_dsn, autocommit=True) as conn:
        conn.execute(FORGED_PRUNE, (str(uuid.uuid4()),))
        for cutoff in ("now() - interval '31 days'", "now()", "'infinity'::timestamptz", "NULL"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="minimum retention"):
                conn.execute(f"SELECT audit_drop_partitions({cutoff})")
        for statement in ("UPDATE audit_meta SET value = '0' WHERE name = 'min_retention'",
                          "DELETE FROM audit_meta WHERE name = 'min_retention'"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert store.plan_prune(now - timedelta(days=45)) is None  # the store never plans inside the floor…
    with pytest.raises(AppendOnlyViolation, match="minimum retention"):
        store.prune(PrunePlan(now - timedelta(days=31), 20, b"", 1))  # …nor does the database drop it
    assert service_trail.trail.prune() is None  # the service's own 45-day retention keeps everything too
    assert store.bounds() == (1, 25)
    report = service_trail.trail.verify()  # and the forged row itself is caught: it carries no valid signature
    assert report.problem is Problem.CHECKPOINT_SIGNATURE and "'attacker'" in report.detail


def test_owner_lowers_the_floor_and_what_is_kept_stays_provable(
    service_trail: ServiceTrail, signer: LocalMlDsaSigner
) -> None:
    store, trail, before = service_trail.store, service_trail.trail, service_trail.checkpoint
    with psycopg.connect(service_trail.owner_dsn, autocommit=True) as conn:
        assert pg_schema.set_min_retention(conn, "30 days") == "30 days"
        with pytest.raises(ValueError, match="negative"):
            pg_schema.set_min_retention(conn, "-1 day")
    migrate(service_trail.owner_dsn)  # re-creating the function keeps the service role's grant
    result = trail.prune()
    assert result is not None and result.records_dropped == 20
    assert store.bounds() == (21, 25)
    trail.append(events(4), POLICY)
    after = trail.checkpoint()  # signed after pruning
    assert after is not None and after.signature_valid(signer) and after.sequence == 29
    kept = store.query(QueryFilter(newest_first=False), 0, 1)[0]
    assert kept.sequence == 21
    path = merkle.inclusion_proof(kept.sequence - 1, after.sequence, store)
    leaf = merkle.leaf_hash(kept.canonical())
    assert merkle.verify_inclusion(leaf, kept.sequence - 1, after.sequence, path, after.tree_root)
    old_to_new = merkle.consistency_proof(before.sequence, after.sequence, store)
    assert merkle.verify_consistency(before.sequence, after.sequence, before.tree_root, after.tree_root, old_to_new)
    assert trail.verify().ok


def migrate(owner_dsn: str) -> None:
    """`ztmesh audit migrate` on a database already installed: it re-creates the retention function."""
    done = subprocess.run(
        [sys.executable, "-m", "ztmesh.cli", "audit", "migrate", "--dsn", owner_dsn],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0 and "already installed" in done.stdout, done.stderr


def _insert_prune_row(conn: psycopg.Connection, head: tuple[int, bytes], through: tuple[int, bytes]) -> None:
    conn.execute(
        f"INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS}) VALUES "
        "(%s, 'prune', %s, %s, now(), 'attacker', 1, 'none', %s, %s, now(), '', '', '')",
        (str(uuid.uuid4()), head[0], head[1], through[0], through[1]),
    )


def test_a_prune_row_that_does_not_match_the_chain_covers_nothing_below_the_floor(
    service_trail: ServiceTrail,
) -> None:
    """With the floor out of the way, the function's last guard is the prune row itself: a row the service
    role inserts must name the stored hashes of the record it prunes through and of the head. The database
    runs the function as installed by an older version until `ztmesh audit migrate` replaces it."""
    store, trail, now = service_trail.store, service_trail.trail, service_trail.clock.now
    with psycopg.connect(service_trail.owner_dsn, autocommit=True) as conn:
        pg_schema.set_min_retention(conn, "30 days")
        old_body = pg_schema._DROP_PARTITIONS.split("covered bigint := (", 1)
        old_body[1] = old_body[1].split("));", 1)[1]  # the unchecked max() the function had before
        conn.execute(
            (old_body[0] + "covered bigint := (SELECT max(pruned_through_sequence) FROM audit_checkpoints "
             "WHERE kind = 'prune');" + old_body[1]).replace("{schema}", "public")
        )  # fmt: skip
    migrate(service_trail.owner_dsn)
    plan = store.plan_prune(now - timedelta(days=45))
    assert plan is not None and plan.through_sequence == 20
    head = store.head()
    real_head, real_through = (head.sequence, head.hash), (plan.through_sequence, plan.through_hash)
    forged = {
        "wrong through-hash": (real_head, (20, b"\x00" * 32)),
        "wrong head hash": ((25, b"\x00" * 32), real_through),
        "head that was never stored": ((1_000_000, b"\x00"), real_through),
        "nothing real": ((1_000_000, b"\x00"), (1_000_000, b"\x00")),
    }
    with psycopg.connect(service_trail.service_dsn, autocommit=True) as conn:
        for what, (forged_head, forged_through) in forged.items():
            _insert_prune_row(conn, forged_head, forged_through)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no prune checkpoint covers"):
                conn.execute("SELECT audit_drop_partitions(%s)", (plan.cutoff,))
            assert store.bounds() == (1, 25), what  # refused by the function, which the role may still run
    with pytest.raises(PruneRefused, match="invalid signature for key 'attacker'"):
        trail.prune()  # and the service itself will not prune past rows that do not verify


def test_sqlite_refuses_deletes_inside_its_floor(tmp_path: Path, signer: LocalMlDsaSigner) -> None:
    clock = Clock(Clock().now - timedelta(days=120))
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path, clock=clock)  # the default floor: 7 years
    store.append(events(10), POLICY)
    clock.advance(days=120)
    db = store._db  # the embedded store's own handle: what code in the service process could reach
    db.execute(
        f"INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS}) VALUES "
        "(?, 'prune', 1000, x'00', '2026-01-01T00:00:00.000000Z', 'attacker', 1, 'none', 1000, x'00', '', x'', x'', "
        "'')",
        (str(uuid.uuid4()),),
    )
    for statement in ("DELETE FROM audit_records", "UPDATE audit_meta SET value = '0'", "DELETE FROM audit_meta"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(statement)
    assert store.plan_prune(clock.now - timedelta(days=45)) is None
    assert store.bounds() == (1, 10)
    store.close()

    clock.now -= timedelta(days=120)
    lowered = SqliteAuditStore(tmp_path / "lowered.db", clock=clock, min_retention=timedelta(days=30))
    trail = AuditTrail(lowered, signer, signer, TrailSettings(retention=timedelta(days=45)), clock)
    trail.append(events(10), POLICY)
    clock.advance(days=120)
    trail.append(events(2), POLICY)
    result = trail.prune()
    assert result is not None and result.records_dropped == 10 and lowered.bounds() == (11, 12)
    assert trail.verify().ok
    lowered.close()
