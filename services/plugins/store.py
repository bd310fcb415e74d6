"""Registered plugins persist here: the `PluginStore` seam with SQLite (embedded) and PostgreSQL.

Each row keeps the module's signature and its signer's public key, so loading checks it again."""

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
from ztmesh.plugins.manifest import Manifest, ModuleSignature

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plugins (
    name TEXT NOT NULL, version TEXT NOT NULL, manifest TEXT NOT NULL, module {blob} NOT NULL,
    module_sha256 TEXT NOT NULL, signing_key_id TEXT NOT NULL, registered_by TEXT NOT NULL,
    registered_at TEXT NOT NULL, PRIMARY KEY (name, version))
"""
# Added after the first release (stores created before hold unsigned rows, which then do not load).
_SIGNATURE_COLUMNS = {
    "signing_key_version": "INTEGER",
    "signing_algorithm": "TEXT",
    "signing_public_key": "{blob}",
    "signature": "{blob}",
}
_COLUMNS = (
    "name, version, manifest, module, module_sha256, signing_key_id, registered_by, registered_at, "
    "signing_key_version, signing_algorithm, signing_public_key, signature"
)


@dataclass(frozen=True)
class StoredPlugin:
    manifest: Manifest
    module: bytes
    module_sha256: str
    signature: ModuleSignature | None
    registered_by: str
    registered_at: datetime

    @property
    def signing_key_id(self) -> str:
        return self.signature.key_id if self.signature else ""


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
            signed = plugin.signature
            cur.execute(
                self._sql(f"INSERT INTO plugins ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                (
                    m.name,
                    m.version,
                    json.dumps(m.to_json()),
                    plugin.module,
                    plugin.module_sha256,
                    plugin.signing_key_id,
                    plugin.registered_by,
                    plugin.registered_at.isoformat(),
                    signed.key_version if signed else None,
                    signed.algorithm if signed else None,
                    signed.public_key if signed else None,
                    signed.signature if signed else None,
                ),
            )

    def all(self) -> list[StoredPlugin]:
        with self._cursor() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM plugins ORDER BY name, version")
            return [_row_to_plugin(row) for row in cur.fetchall()]

    def remove(self, name: str, version: str) -> int:
        with self._cursor() as cur:
            if version:
                cur.execute(self._sql("DELETE FROM plugins WHERE name = ? AND version = ?"), (name, version))
            else:
                cur.execute(self._sql("DELETE FROM plugins WHERE name = ?"), (name,))
            return int(cur.rowcount)


def _row_to_plugin(row: tuple[Any, ...]) -> StoredPlugin:
    _, _, manifest, module, sha, key_id, by, at, key_version, algorithm, public_key, signature = row
    signed = (
        ModuleSignature(key_id, int(key_version or 0), algorithm or "", bytes(public_key or b""), bytes(signature))
        if key_id and signature is not None
        else None
    )
    return StoredPlugin(
        Manifest.from_json(json.loads(manifest)), bytes(module), sha, signed, by, datetime.fromisoformat(at)
    )


class SqlitePluginStore(_SqlPluginStore):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(_SCHEMA.format(blob="BLOB"))
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(plugins)")}
        for column, kind in _SIGNATURE_COLUMNS.items():
            if column not in present:
                self._conn.execute(f"ALTER TABLE plugins ADD COLUMN {column} {kind.format(blob='BLOB')}")
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
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('ztmesh.plugins.schema'))")  # replicas start together
            conn.execute(_SCHEMA.format(blob="BYTEA"))
            for column, kind in _SIGNATURE_COLUMNS.items():
                conn.execute(f"ALTER TABLE plugins ADD COLUMN IF NOT EXISTS {column} {kind.format(blob='BYTEA')}")

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
