"""Builders shared by the audit tests: events, a settable clock, a trail database (SQLite or
PostgreSQL) with the superuser back door a malicious DBA would use to tamper with it, and a trail over
it that the verifiers' tests check."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ztmesh.audit.record import EventV1, make_event
from ztmesh.audit.signing import LocalMlDsaSigner
from ztmesh.audit.store import AuditStore
from ztmesh.audit.store_sqlite import SCHEMA, SqliteAuditStore
from ztmesh.audit.tiles import tile_rows
from ztmesh.audit.trail import AuditTrail, TrailSettings
from ztmesh.mesh.auditing import uuid7

_counter = itertools.count(1)
POLICY = "spiffe://ztmesh.local/ns/ztmesh/sa/policy"


class Clock:
    """A settable clock for the store's `recorded_at` (retention needs records from months ago)."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@dataclass
class Backend:
    kind: str
    dsn: str  # what offline verify and child processes open
    postgres: Any = None
    stores: list[AuditStore] = field(default_factory=list)

    def store(self, clock: Clock | None = None, **kwargs: Any) -> AuditStore:
        if self.kind == "sqlite":
            made: AuditStore = SqliteAuditStore(self.dsn, clock=clock or Clock(), **kwargs)
        else:
            from ztmesh.audit.store_postgres import PostgresAuditStore

            made = PostgresAuditStore(self.dsn, clock=clock or Clock(), **kwargs)
        self.stores.append(made)
        return made

    @property
    def tree_table(self) -> str:
        """Where the store keeps the Merkle tree: a row per node (SQLite), tiles (PostgreSQL, tiles.py)."""
        return "audit_tree" if self.kind == "sqlite" else "audit_tiles"

    def tree_inserts(self, nodes: dict[tuple[int, int], bytes]) -> list[tuple[str, tuple[Any, ...]]]:
        """INSERT statements (for `tamper`) that store a whole tree's nodes as this backend keeps them."""
        if self.kind == "sqlite":
            return [("INSERT INTO audit_tree (level, idx, hash) VALUES (?, ?, ?)", (level, idx, h))
                    for (level, idx), h in nodes.items()]  # fmt: skip
        return [("INSERT INTO audit_tiles (level, tile, width, hashes) VALUES (?, ?, ?, ?)", row)
                for row in tile_rows(nodes)]  # fmt: skip

    def tamper(self, *statements: str | tuple[str, Sequence[Any]]) -> None:
        """Run statements (text, or text and parameters) as a malicious superuser would: append-only
        triggers switched off. Parameters use the driver's placeholder (`?` SQLite, `%s` PostgreSQL)."""
        if self.kind == "sqlite":
            db = sqlite3.connect(self.dsn, isolation_level=None)
            for trigger in ("audit_records_no_update", "audit_records_no_delete", "audit_checkpoints_no_update",
                            "audit_checkpoints_no_delete", "audit_tree_no_update", "audit_tree_no_delete"):  # fmt: skip
                db.execute(f"DROP TRIGGER {trigger}")
            for statement in statements:
                text, params = (statement, ()) if isinstance(statement, str) else statement
                db.execute(text, params)
            db.executescript(SCHEMA)
            db.close()
            return
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")  # superuser-only: triggers do not fire
            for statement in statements:
                text, params = (statement, ()) if isinstance(statement, str) else statement
                conn.execute(text.replace("?", "%s") if params else text, params or None)

    def start_outage(self) -> Any:
        """Make the database refuse this trail's writers for real; returns a handle for end_outage."""
        if self.kind == "sqlite":
            db = sqlite3.connect(self.dsn, isolation_level=None)
            db.execute("BEGIN EXCLUSIVE")  # everyone else's writes now fail with "database is locked"
            return db
        import psycopg
        from psycopg import sql

        name = self.dsn.rsplit("/", 1)[1]
        with psycopg.connect(self.postgres.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        return name

    def end_outage(self, handle: Any) -> None:
        if self.kind == "sqlite":
            handle.execute("ROLLBACK")
            handle.close()
            return
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.postgres.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(handle)))

    def sink_store(self) -> AuditStore:
        """A store opened the way an emitter's sink opens it: failing fast while the database is away."""
        if self.kind == "sqlite":
            return SqliteAuditStore(self.dsn, busy_timeout=0.2)
        from ztmesh.audit.store_postgres import PostgresAuditStore

        return PostgresAuditStore(self.dsn, pool_size=2, connect_timeout=1.0)

    def close(self) -> None:
        for s in self.stores:
            s.close()


def event(i: int = 0, **overrides: Any) -> EventV1:
    fields: dict[str, Any] = {
        "event_id": uuid7(), "time": datetime.now(UTC), "service": "policy", "action": "decide",
        "outcome": "ALLOW" if i % 3 else "DENY", "caller": "spiffe://ztmesh.local/ns/ztmesh/sa/envoy",
        "subject": f"user-{i % 5}", "resource": f"patient/{i}", "decision_id": uuid7(),
        "details": {"i": i, "score": 70.5 + i % 10, "client_ip": f"10.1.{i % 256}.77"},
    }  # fmt: skip
    fields.update(overrides)
    return make_event(**fields)


def events(n: int, start: int = 0) -> list[EventV1]:
    return [event(i) for i in range(start, start + n)]


def verifiable_trail(backend: Backend, signer: LocalMlDsaSigner, clock: Clock | None = None) -> AuditTrail:
    """A trail over `backend` that signs a checkpoint every 7 records and keeps 45 days (a 30-day floor)."""
    store = backend.store(clock or Clock(), min_retention=timedelta(days=30))
    return AuditTrail(store, signer, signer, TrailSettings(checkpoint_every=7, retention=timedelta(days=45)),
                      clock or Clock())  # fmt: skip
