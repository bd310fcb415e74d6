"""Offline verification: the chain and every checkpoint signature straight from the database, with
nothing but a connection string and the checkpoint public key(s) — the audit service need not run.

`ztmesh audit verify --dsn postgresql://… --public-key audit-checkpoints.pem` (or a SQLite file path).
A read-only role suffices: the verifier never writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ztmesh.audit.chain import CheckpointVerifier, VerifyReport
from ztmesh.audit.signing import load_public_keys
from ztmesh.audit.store import AuditStore
from ztmesh.audit.trail import verify_store


def open_for_reading(dsn: str) -> AuditStore:
    """A store over `dsn` that installs nothing: postgresql://… or a SQLite file (path or sqlite:///path)."""
    if dsn.startswith(("postgresql://", "postgres://")) or "host=" in dsn:
        from ztmesh.audit.store_postgres import PostgresAuditStore

        return PostgresAuditStore(dsn, install=False, pool_size=1)
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    return SqliteAuditStore(dsn.removeprefix("sqlite://"), read_only=True)


def verify_database(
    dsn: str, verifier: CheckpointVerifier, from_sequence: int = 0, to_sequence: int = 0
) -> VerifyReport:
    store = open_for_reading(dsn)
    try:
        return verify_store(store, verifier, from_sequence, to_sequence)
    finally:
        store.close()


def verify_offline(dsn: str, public_keys: Sequence[Path], from_sequence: int = 0, to_sequence: int = 0) -> VerifyReport:
    return verify_database(dsn, load_public_keys(public_keys), from_sequence, to_sequence)
