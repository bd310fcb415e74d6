"""Where keys live: the `KeyStore` seam, with SQLite (embedded default) and PostgreSQL adapters.

Only public keys and *wrapped* private material are stored (see kek.py). Both adapters share the
SQL below; they differ in connections, placeholders and how a key row is locked for rotation.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ztmesh.keys.algorithms import Algorithm, Purpose
from ztmesh.keys.errors import KeyExists, KeyNotFound
from ztmesh.keys.model import AccessPolicy, Key, KeyVersion, VersionState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY, purpose TEXT NOT NULL, algorithm TEXT NOT NULL,
    primary_version INTEGER NOT NULL, access_policy TEXT NOT NULL, labels TEXT NOT NULL,
    created_at TEXT NOT NULL, owner TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS key_versions (
    key_id TEXT NOT NULL REFERENCES keys (key_id), version INTEGER NOT NULL, state TEXT NOT NULL,
    public_key {blob} NOT NULL, wrapped_private {blob}, created_at TEXT NOT NULL, destroyed_at TEXT,
    PRIMARY KEY (key_id, version));
"""
_KEY_COLUMNS = "key_id, purpose, algorithm, primary_version, access_policy, labels, created_at, owner"
# Stores created before key ownership was recorded lack the column; their keys keep an unknown owner.
_ADD_OWNER = "ALTER TABLE keys ADD COLUMN owner TEXT NOT NULL DEFAULT ''"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class KeyStore(Protocol):
    def get_meta(self, name: str) -> str | None: ...
    def set_meta(self, name: str, value: str) -> None: ...
    def create_key(self, key: Key) -> None: ...
    def get_key(self, key_id: str) -> Key: ...
    def list_keys(self, after: str, limit: int) -> list[Key]: ...
    def add_version(self, key_id: str, make_version: Any) -> KeyVersion:
        """Atomically add version max+1 built by `make_version(number)` and make it primary."""
        ...

    def set_state(self, key_id: str, version: int, state: VersionState) -> None: ...
    def erase_material(self, key_id: str, version: int) -> None: ...
    def replace_wrapped(self, key_id: str, version: int, wrapped: bytes) -> None: ...
    def rewrap_all(self, updates: list[tuple[str, int, bytes]], meta_name: str, meta_value: str) -> None: ...
    def close(self) -> None: ...


class _SqlKeyStore:
    placeholder = "?"

    @contextlib.contextmanager
    def _tx(self, *, lock_key: str | None = None) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    def get_meta(self, name: str) -> str | None:
        with self._tx() as cur:
            cur.execute(self._sql("SELECT value FROM keys_meta WHERE name = ?"), (name,))
            row = cur.fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        with self._tx() as cur:
            cur.execute(self._sql("DELETE FROM keys_meta WHERE name = ?"), (name,))
            cur.execute(self._sql("INSERT INTO keys_meta (name, value) VALUES (?, ?)"), (name, value))

    def create_key(self, key: Key) -> None:
        with self._tx() as cur:
            cur.execute(self._sql("SELECT 1 FROM keys WHERE key_id = ?"), (key.key_id,))
            if cur.fetchone():
                raise KeyExists(key.key_id)
            cur.execute(
                self._sql(f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
                (
                    key.key_id,
                    key.purpose.value,
                    key.algorithm.value,
                    key.primary_version,
                    json.dumps(key.access_policy.to_json()),
                    json.dumps(key.labels),
                    key.created_at.isoformat(),
                    key.owner,
                ),
            )
            for version in key.versions:
                self._insert_version(cur, key.key_id, version)

    def _insert_version(self, cur: Any, key_id: str, v: KeyVersion) -> None:
        cur.execute(
            self._sql("INSERT INTO key_versions VALUES (?, ?, ?, ?, ?, ?, ?)"),
            (key_id, v.version, v.state.value, v.public_key, v.wrapped_private, v.created_at.isoformat(), None),
        )

    def _load(self, cur: Any, rows: list[Any]) -> list[Key]:
        keys = []
        for key_id, purpose, algorithm, primary, policy, labels, created, owner in rows:
            cur.execute(
                self._sql(
                    "SELECT version, state, public_key, wrapped_private, created_at, destroyed_at "
                    "FROM key_versions WHERE key_id = ? ORDER BY version"
                ),
                (key_id,),
            )
            versions = [
                KeyVersion(
                    n,
                    VersionState(state),
                    bytes(public),
                    bytes(wrapped) if wrapped is not None else None,
                    datetime.fromisoformat(made),
                    datetime.fromisoformat(gone) if gone else None,
                )
                for n, state, public, wrapped, made, gone in cur.fetchall()
            ]
            keys.append(
                Key(
                    key_id,
                    Purpose(purpose),
                    Algorithm(algorithm),
                    primary,
                    AccessPolicy.from_json(json.loads(policy)),
                    json.loads(labels),
                    datetime.fromisoformat(created),
                    versions,
                    owner,
                )
            )
        return keys

    def get_key(self, key_id: str) -> Key:
        with self._tx() as cur:
            cur.execute(self._sql(f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id = ?"), (key_id,))
            found = self._load(cur, cur.fetchall())
        if not found:
            raise KeyNotFound(key_id)
        return found[0]

    def list_keys(self, after: str, limit: int) -> list[Key]:
        with self._tx() as cur:
            cur.execute(
                self._sql(f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id > ? ORDER BY key_id LIMIT ?"), (after, limit)
            )
            return self._load(cur, cur.fetchall())

    def add_version(self, key_id: str, make_version: Any) -> KeyVersion:
        with self._tx(lock_key=key_id) as cur:
            cur.execute(self._sql("SELECT max(version) FROM key_versions WHERE key_id = ?"), (key_id,))
            current = cur.fetchone()[0]
            if current is None:
                raise KeyNotFound(key_id)
            version: KeyVersion = make_version(current + 1)
            self._insert_version(cur, key_id, version)
            cur.execute(self._sql("UPDATE keys SET primary_version = ? WHERE key_id = ?"), (version.version, key_id))
        return version

    def set_state(self, key_id: str, version: int, state: VersionState) -> None:
        destroyed = _now() if state is VersionState.DESTROYED else None
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "UPDATE key_versions SET state = ?, destroyed_at = coalesce(destroyed_at, ?) "
                    "WHERE key_id = ? AND version = ?"
                ),
                (state.value, destroyed, key_id, version),
            )
            if cur.rowcount == 0:
                raise KeyNotFound(key_id, version)

    def erase_material(self, key_id: str, version: int) -> None:
        with self._tx() as cur:
            cur.execute(
                self._sql("UPDATE key_versions SET wrapped_private = NULL WHERE key_id = ? AND version = ?"),
                (key_id, version),
            )

    def replace_wrapped(self, key_id: str, version: int, wrapped: bytes) -> None:
        with self._tx() as cur:
            cur.execute(
                self._sql("UPDATE key_versions SET wrapped_private = ? WHERE key_id = ? AND version = ?"),
                (wrapped, key_id, version),
            )

    def rewrap_all(self, updates: list[tuple[str, int, bytes]], meta_name: str, meta_value: str) -> None:
        with self._tx() as cur:
            for key_id, version, wrapped in updates:
                cur.execute(
                    self._sql("UPDATE key_versions SET wrapped_private = ? WHERE key_id = ? AND version = ?"),
                    (wrapped, key_id, version),
                )
            cur.execute(self._sql("UPDATE keys_meta SET value = ? WHERE name = ?"), (meta_value, meta_name))


class SqliteKeyStore(_SqlKeyStore):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        for attempt in range(50):  # ZTMESH_PROCESSES > 1 open the file at once; switching to WAL skips the busy wait
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1)
        self._conn.execute("PRAGMA secure_delete=ON")  # erased material is overwritten in the file
        self._lock = threading.RLock()
        self._conn.executescript(_SCHEMA.format(blob="BLOB"))
        if "owner" not in {row[1] for row in self._conn.execute("PRAGMA table_info(keys)")}:
            self._conn.execute(_ADD_OWNER)

    @contextlib.contextmanager
    def _tx(self, *, lock_key: str | None = None) -> Iterator[Any]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


class PostgresKeyStore(_SqlKeyStore):
    placeholder = "%s"

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 8) -> None:
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(dsn, min_size=min_size, max_size=max_size, open=True, timeout=10)
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('ztmesh.keys.schema'))")
            for statement in _SCHEMA.format(blob="BYTEA").split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(_ADD_OWNER.replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS"))

    @contextlib.contextmanager
    def _tx(self, *, lock_key: str | None = None) -> Iterator[Any]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if lock_key is not None:
                cur.execute("SELECT 1 FROM keys WHERE key_id = %s FOR UPDATE", (lock_key,))
            yield cur

    def close(self) -> None:
        self._pool.close()


def open_key_store(database_url: str, data_dir: Path) -> KeyStore:
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresKeyStore(database_url)
    return SqliteKeyStore(data_dir / "keys" / "keys.db")
