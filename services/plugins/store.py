"""Registered plugins persist here: the `PluginStore` seam with SQLite (embedded) and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ztmesh.plugins.errors import PluginExists
from ztmesh.plugins.manifest import Manifest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plugins (
    name TEXT NOT NULL, version TEXT NOT NULL, manifest TEXT NOT NULL, module {blob} NOT NULL,
    module_sha256 TEXT NOT NULL, signing_key_id TEXT NOT NULL, registered_by TEXT NOT NULL,
    registered_at TEXT NOT NULL, PRIMARY KEY (name, version))
"""


@dataclass(frozen=True)
class StoredPlugin:
    manifest: Manifest
    module: bytes
    module_sha256: str
    signing_key_id: str
    registered_by: str
    registered_at: datetime


class PluginStore(Protocol):
    def add(self, plugin: StoredPlugin) -> None: ...
    def all(self) -> list[StoredPlugin]: ...
    def remove(self, name: str, version: str) -> int: ...
    def close(self) -> None: ...


class _SqlPluginStore:
    placeholder = "?"

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    def add(self, plugin: StoredPlugin) -> None:
        m = plugin.manifest
        with self._cursor() as cur:
            cur.execute(self._sql("SELECT 1 FROM plugins WHERE name = ? AND version = ?"), (m.name, m.version))
            if cur.fetchone():
                raise PluginExists(f"plugin {m.name} {m.version} is already registered; unregister it first")
            cur.execute(
                self._sql("INSERT INTO plugins VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
                (
                    m.name,
                    m.version,
                    json.dumps(m.to_json()),
                    plugin.module,
                    plugin.module_sha256,
                    plugin.signing_key_id,
                    plugin.registered_by,
                    plugin.registered_at.isoformat(),
                ),
            )

    def all(self) -> list[StoredPlugin]:
        with self._cursor() as cur:
            cur.execute(
                "SELECT manifest, module, module_sha256, signing_key_id, registered_by, registered_at "
                "FROM plugins ORDER BY name, version"
            )
            return [
                StoredPlugin(Manifest.from_json(json.loads(m)), bytes(mod), sha, key, by, datetime.fromisoformat(at))
                for m, mod, sha, key, by, at in cur.fetchall()
            ]

    def remove(self, name: str, version: str) -> int:
        with self._cursor() as cur:
            if version:
                cur.execute(self._sql("DELETE FROM plugins WHERE name = ? AND version = ?"), (name, version))
            else:
                cur.execute(self._sql("DELETE FROM plugins WHERE name = ?"), (name,))
            return int(cur.rowcount)


class SqlitePluginStore(_SqlPluginStore):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(_SCHEMA.format(blob="BLOB"))
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
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


class PostgresPluginStore(_SqlPluginStore):
    placeholder = "%s"

    def __init__(self, dsn: str) -> None:
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(dsn, min_size=1, max_size=4, open=True, timeout=10)
        with self._pool.connection() as conn:
            conn.execute(_SCHEMA.format(blob="BYTEA"))

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    def close(self) -> None:
        self._pool.close()


def open_plugin_store(database_url: str, data_dir: Path) -> PluginStore:
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresPluginStore(database_url)
    return SqlitePluginStore(data_dir / "plugins" / "plugins.db")


def now() -> datetime:
    return datetime.now(UTC)
