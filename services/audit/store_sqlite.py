"""SQLite audit store: the embedded default, one file, the same append-only semantics as PostgreSQL.

Triggers refuse UPDATE and DELETE of records, checkpoints and Merkle tree nodes; the one exception is
retention, which may delete only records that a stored PRUNE checkpoint covers (their tree nodes stay,
so what remains is still provable). `BEGIN IMMEDIATE` takes the database
write lock before the head is read, so appenders in several processes never fork the chain.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ztmesh.audit import canonical, merkle
from ztmesh.audit.chain import ChainHead, ChainLink, Checkpoint
from ztmesh.audit.errors import AppendOnlyViolation, StoreError
from ztmesh.audit.record import AuditRecord, EventV1, assemble, quoted
from ztmesh.audit.store import (
    CHECKPOINT_COLUMNS,
    DEFAULT_MIN_RETENTION,
    RECORD_COLUMNS,
    AppendResult,
    AppendTip,
    Clock,
    PrunePlan,
    QueryFilter,
    checkpoint_from_row,
    checkpoint_params,
    floor_time,
    record_from_row,
    record_params,
    results_for,
    utc_now,
)

_REFUSE = "audit trail is append-only: {} refused"
_UNCOVERED_DELETE = "DELETE of audit_records not covered by a prune checkpoint or younger than the minimum retention"
# A record may go only when a PRUNE checkpoint covers it AND it is older than the floor in audit_meta
# (no floor row: nothing goes). The clock is SQLite's, not the caller's.
_DELETE_GUARD = f"""CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records
WHEN NOT EXISTS (SELECT 1 FROM audit_checkpoints WHERE kind = 'prune' AND pruned_through_sequence >= OLD.sequence)
  OR julianday(OLD.recorded_at) > julianday('now')
     - coalesce((SELECT CAST(value AS REAL) FROM audit_meta WHERE name = 'min_retention_days'), 1e9)
BEGIN SELECT RAISE(ABORT, '{_REFUSE.format(_UNCOVERED_DELETE)}'); END;"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit_records (
    sequence INTEGER PRIMARY KEY, recorded_at TEXT NOT NULL, event_id TEXT NOT NULL UNIQUE, time TEXT NOT NULL,
    service TEXT NOT NULL, emitter TEXT NOT NULL, caller TEXT NOT NULL, subject TEXT NOT NULL,
    action TEXT NOT NULL, resource TEXT NOT NULL, outcome TEXT NOT NULL, decision_id TEXT NOT NULL,
    trace_id TEXT NOT NULL, details TEXT NOT NULL, masked TEXT NOT NULL, prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS audit_records_time ON audit_records (time);
CREATE INDEX IF NOT EXISTS audit_records_subject ON audit_records (subject, sequence);
CREATE INDEX IF NOT EXISTS audit_records_decision ON audit_records (decision_id) WHERE decision_id <> '';
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    checkpoint_id TEXT PRIMARY KEY, kind TEXT NOT NULL, sequence INTEGER NOT NULL, head_hash BLOB NOT NULL,
    time TEXT NOT NULL, key_id TEXT NOT NULL, key_version INTEGER NOT NULL, algorithm TEXT NOT NULL,
    pruned_through_sequence INTEGER NOT NULL, pruned_through_hash BLOB NOT NULL, pruned_before TEXT NOT NULL,
    signature BLOB NOT NULL, tree_root BLOB NOT NULL DEFAULT x'', note TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS audit_checkpoints_sequence ON audit_checkpoints (sequence, time);
CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, '{_REFUSE.format("UPDATE of audit_records")}'); END;
CREATE TABLE IF NOT EXISTS audit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_meta_no_update BEFORE UPDATE ON audit_meta
BEGIN SELECT RAISE(ABORT, '{_REFUSE.format("UPDATE of audit_meta")}'); END;
CREATE TRIGGER IF NOT EXISTS audit_meta_no_delete BEFORE DELETE ON audit_meta
BEGIN SELECT RAISE(ABORT, '{_REFUSE.format("DELETE of audit_meta")}'); END;
{_DELETE_GUARD}
CREATE TABLE IF NOT EXISTS audit_tree (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS audit_tree_no_update BEFORE UPDATE ON audit_tree
BEGIN SELECT RAISE(ABORT, '{_REFUSE.format("UPDATE of audit_tree")}'); END;
CREATE TRIGGER IF NOT EXISTS audit_tree_no_delete BEFORE DELETE ON audit_tree
BEGIN SELECT RAISE(ABORT, '{_REFUSE.format("DELETE of audit_tree")}'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, '{_REFUSE.format("UPDATE of audit_checkpoints")}'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, '{_REFUSE.format("DELETE of audit_checkpoints")}'); END;
"""


def _set_retention_floor(db: sqlite3.Connection, floor: timedelta) -> None:
    """Record the floor once, when the file is made (a file made before floors existed gets it now, and
    its old delete trigger, which knew no floor, is replaced)."""
    if db.execute("SELECT 1 FROM audit_meta WHERE name = 'min_retention_days'").fetchone() is None:
        # Only then a write: opening a file another process holds locked must not need the write lock.
        db.execute(
            "INSERT OR IGNORE INTO audit_meta VALUES ('min_retention_days', ?)", (str(floor.total_seconds() / 86400),)
        )
    trigger = db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'audit_records_no_delete'")
    if "audit_meta" not in trigger.fetchone()[0]:
        db.executescript(f"BEGIN; DROP TRIGGER audit_records_no_delete; {_DELETE_GUARD} COMMIT;")


def retention_floor_cutoff(db: sqlite3.Connection) -> datetime | None:
    """Now minus the file's floor (None without a floor: then nothing may be pruned)."""
    row = db.execute("SELECT CAST(value AS REAL) FROM audit_meta WHERE name = 'min_retention_days'").fetchone()
    return utc_now() - timedelta(days=row[0]) if row else None


def _add_tree_columns(db: sqlite3.Connection) -> None:
    """Files made before checkpoints carried the Merkle tree get its two columns (empty in old rows)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(audit_checkpoints)")}
    if "tree_root" not in columns:
        db.execute("ALTER TABLE audit_checkpoints ADD COLUMN tree_root BLOB NOT NULL DEFAULT x''")
    if "note" not in columns:
        db.execute("ALTER TABLE audit_checkpoints ADD COLUMN note TEXT NOT NULL DEFAULT ''")


class SqliteAuditStore:
    def __init__(
        self,
        path: Path | str,
        *,
        clock: Clock = utc_now,
        partition: str = "month",
        read_only: bool = False,
        busy_timeout: float = 30.0,
        min_retention: timedelta = DEFAULT_MIN_RETENTION,
    ) -> None:
        self.path = str(path)
        self.clock = clock
        self.partition = partition
        try:
            if read_only:
                if not Path(self.path).is_file():
                    raise StoreError(f"audit database {self.path} does not exist")
                uri = f"file:{Path(self.path).resolve()}?mode=ro"
                self._db = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False, timeout=busy_timeout
                )
                self._db.execute("SELECT 1 FROM audit_records LIMIT 1")
            else:
                if self.path != ":memory:":
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                # isolation_level=None: transactions are explicit, so BEGIN IMMEDIATE means what it says.
                self._db = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(SCHEMA)
                _add_tree_columns(self._db)
                _set_retention_floor(self._db, min_retention)
        except sqlite3.Error as exc:
            raise StoreError(f"audit database {self.path}: {exc}") from None
        self._lock = threading.RLock()
        if not read_only:
            self._grow_tree_to_head()

    def _grow_tree_to_head(self) -> None:
        """A file written before the Merkle tree existed gets its tree, from its records, when opened:
        appends need the frontier, and the records are all that defines the tree."""
        head = self.head()
        if head.sequence == 0:
            return
        try:
            merkle.frontier_from(head.sequence, self.read_nodes)
            return
        except merkle.ProofError:
            pass

        def build() -> None:
            first, last = self.bounds()
            if first != 1:
                raise StoreError(
                    f"audit database {self.path}: records 1..{first - 1} were pruned before this file had a "
                    "Merkle tree, so the tree cannot be rebuilt; start a new audit database"
                )
            nodes = merkle.MemoryNodes()
            nodes.append(merkle.leaf_hash(link.canonical) for link in self.links(1, last))
            self._db.executemany("INSERT OR IGNORE INTO audit_tree (level, idx, hash) VALUES (?, ?, ?)",
                                 [(level, idx, h) for (level, idx), h in nodes.nodes.items()])  # fmt: skip

        self._write(build)

    def _write(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(*args)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return result
            except sqlite3.IntegrityError as exc:
                if "append-only" in str(exc):
                    raise AppendOnlyViolation(str(exc)) from None
                raise StoreError(f"audit database {self.path}: {exc}") from None
            except sqlite3.Error as exc:
                raise StoreError(f"audit database {self.path}: {exc}") from None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"audit database {self.path}: {exc}") from None

    # --- append -------------------------------------------------------------------------------------------

    def _head_locked(self) -> ChainHead:
        row = self._db.execute("SELECT sequence, hash, recorded_at FROM audit_records ORDER BY sequence DESC LIMIT 1")
        found = row.fetchone()
        if found:
            return ChainHead(found[0], bytes(found[1]), found[2])
        anchor = self._db.execute(
            "SELECT pruned_through_sequence, pruned_through_hash, pruned_before FROM audit_checkpoints "
            "WHERE kind = 'prune' ORDER BY pruned_through_sequence DESC LIMIT 1"
        ).fetchone()
        return ChainHead(anchor[0], bytes(anchor[1]), "") if anchor else ChainHead()

    def _stored(self, ids: list[str]) -> dict[str, tuple[int, EventV1]]:
        out: dict[str, tuple[int, EventV1]] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            rows = self._db.execute(
                f"SELECT {RECORD_COLUMNS} FROM audit_records WHERE event_id IN ({','.join('?' * len(part))})", part
            ).fetchall()
            for row in rows:
                record = record_from_row(row)
                out[record.event.event_id] = (record.sequence, record.event)
        return out

    def _append_locked(self, tip: AppendTip, events: Sequence[EventV1], emitter: str) -> list[AppendResult]:
        plan, records, nodes = tip.extend(events, canonical.format_time(self.clock()), emitter)
        if records:
            self._db.executemany(
                f"INSERT INTO audit_records ({RECORD_COLUMNS}) VALUES ({','.join('?' * 17)})",
                [record_params(r) for r in records],
            )
            self._db.executemany("INSERT INTO audit_tree (level, idx, hash) VALUES (?, ?, ?)",
                                 [(level, idx, h) for (level, idx), h in nodes])  # fmt: skip
        return results_for(events, plan, {r.event.event_id: r.sequence for r in records})

    def _node_reader(self, ids: Sequence[merkle.NodeId]) -> list[bytes]:
        # One indexed search per level (`level = ? AND idx IN (...)`), joined by UNION ALL into one
        # statement: SQLite answers a row-value `(level, idx) IN (VALUES ...)` by scanning the whole
        # table, which made every append and proof slower as the log grew.
        by_level: dict[int, list[int]] = {}
        for level, idx in ids:
            by_level.setdefault(int(level), []).append(int(idx))
        searches = [(level, indexes[i : i + 500]) for level, indexes in by_level.items()
                    for i in range(0, len(indexes), 500)]  # fmt: skip
        found: dict[tuple[int, int], bytes] = {}
        for first in range(0, len(searches), 30):  # one statement for up to 30 searches (a frontier: one)
            part = searches[first : first + 30]
            rows = self._db.execute(
                " UNION ALL ".join(
                    f"SELECT level, idx, hash FROM audit_tree WHERE level = ? AND idx IN ({','.join('?' * len(idxs))})"
                    for _, idxs in part
                ),
                [v for level, idxs in part for v in (level, *idxs)],
            ).fetchall()
            found.update(((lv, idx), bytes(h)) for lv, idx, h in rows)
        return merkle.nodes_in_order(ids, found)

    def append(self, events: Sequence[EventV1], emitter: str) -> list[AppendResult]:
        return self.append_many([(events, emitter)])[0] if events else []

    def append_many(self, batches: Sequence[tuple[Sequence[EventV1], str]]) -> list[list[AppendResult]]:
        def write() -> list[list[AppendResult]]:
            tip = AppendTip(self._head_locked(), self._stored([e.event_id for events, _ in batches for e in events]),
                            self._node_reader)  # fmt: skip
            return [self._append_locked(tip, events, emitter) if events else [] for events, emitter in batches]

        result: list[list[AppendResult]] = self._write(write)
        return result

    # --- reading ------------------------------------------------------------------------------------------

    def head(self) -> ChainHead:
        with self._lock:
            return self._head_locked()

    def read_nodes(self, ids: Sequence[merkle.NodeId]) -> list[bytes]:
        with self._lock:
            try:
                return self._node_reader(ids)
            except sqlite3.Error as exc:
                raise StoreError(f"audit database {self.path}: {exc}") from None

    def bounds(self) -> tuple[int, int]:
        row = self._read("SELECT min(sequence), max(sequence) FROM audit_records")[0]
        return (row[0] or 0, row[1] or 0)

    def hash_at(self, sequence: int) -> bytes | None:
        rows = self._read("SELECT hash FROM audit_records WHERE sequence = ?", (sequence,))
        return bytes(rows[0][0]) if rows else None

    def links(self, start: int, end: int) -> Iterator[ChainLink]:
        batch = 5000
        cursor = start
        while cursor <= end:
            rows = self._read(
                "SELECT sequence, recorded_at, event_id, time, service, emitter, caller, subject, action, resource, "
                "outcome, decision_id, trace_id, details, masked, prev_hash, hash FROM audit_records "
                "WHERE sequence >= ? AND sequence <= ? ORDER BY sequence LIMIT ?",
                (cursor, end, batch),
            )
            for (seq, rec_at, eid, time, svc, emitter, caller, subject, action, resource, outcome, did, tid,
                 details, masked, prev, digest) in rows:  # fmt: skip
                body = assemble(
                    quoted(action), quoted(caller), quoted(did), details.encode(), quoted(emitter),
                    quoted(eid), masked.encode(), quoted(outcome), quoted(rec_at), quoted(resource),
                    str(seq).encode(), quoted(svc), quoted(subject), quoted(time), quoted(tid),
                )  # fmt: skip
                yield ChainLink(seq, prev, digest, body)
            if len(rows) < batch:
                return
            cursor = rows[-1][0] + 1

    def query(self, where: QueryFilter, after_sequence: int, limit: int) -> list[AuditRecord]:
        clauses, params = [], []
        for column in ("service", "subject", "action", "outcome", "decision_id", "event_id"):
            value = getattr(where, column)
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if where.start:
            clauses.append("time >= ?")
            params.append(canonical.format_time(where.start))
        if where.end:
            clauses.append("time < ?")
            params.append(canonical.format_time(where.end))
        if after_sequence:
            clauses.append("sequence < ?" if where.newest_first else "sequence > ?")
            params.append(after_sequence)
        sql = f"SELECT {RECORD_COLUMNS} FROM audit_records"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += f" ORDER BY sequence {'DESC' if where.newest_first else 'ASC'} LIMIT ?"
        return [record_from_row(row) for row in self._read(sql, [*params, limit])]

    # --- checkpoints and retention ------------------------------------------------------------------------

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._write(
            lambda: self._db.execute(
                f"INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS}) VALUES ({','.join('?' * 14)})",
                checkpoint_params(checkpoint),
            )
        )

    def checkpoints(self) -> list[Checkpoint]:
        rows = self._read(f"SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY sequence, time")
        return [checkpoint_from_row(r) for r in rows]

    def latest_checkpoint(self) -> Checkpoint | None:
        rows = self._read(
            f"SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY sequence DESC, time DESC LIMIT 1"
        )
        return checkpoint_from_row(rows[0]) if rows else None

    def plan_prune(self, cutoff: datetime) -> PrunePlan | None:
        with self._lock:
            floor = retention_floor_cutoff(self._db)
        if floor is None:
            return None
        boundary = floor_time(min(cutoff, floor), self.partition)
        row = self._read(
            "SELECT max(sequence) FROM audit_records WHERE recorded_at < ?", (canonical.format_time(boundary),)
        )[0]
        first, _ = self.bounds()
        if not row[0]:
            return None
        through_hash = self.hash_at(row[0])
        assert through_hash is not None
        return PrunePlan(boundary, row[0], through_hash, first)

    def prune(self, plan: PrunePlan) -> int:
        def drop() -> int:
            return self._db.execute("DELETE FROM audit_records WHERE sequence <= ?", (plan.through_sequence,)).rowcount

        dropped: int = self._write(drop)
        return dropped

    def close(self) -> None:
        with self._lock:
            self._db.close()
