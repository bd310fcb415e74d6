"""Keys fixtures: a KeyManager over each store (SQLite and real PostgreSQL) with a real KEK and ledger."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ztmesh.keys.algorithms import OpenSslProvider
from ztmesh.keys.kek import Kek
from ztmesh.keys.ledger import ShredLedger
from ztmesh.keys.manager import KeyManager
from ztmesh.keys.store import KeyStore, PostgresKeyStore, SqliteKeyStore
from ztmesh.mesh.auditing import AuditEvent

OWNER = "spiffe://ztmesh.local/ns/ztmesh/sa/client"
OTHER = "spiffe://ztmesh.local/ns/ztmesh/sa/plugins"


class EventLog:
    """An AuditEmitter that keeps events in order, so tests can check what was reported."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], KeyStore]]:
    """Opens (again) the same underlying database, like a service restart would."""
    opened: list[KeyStore] = []
    if request.param == "sqlite":
        path = tmp_path / "keys.db"

        def make() -> KeyStore:
            opened.append(SqliteKeyStore(path))
            return opened[-1]
    else:
        dsn = request.getfixturevalue("postgres").new_database()

        def make() -> KeyStore:
            opened.append(PostgresKeyStore(dsn))
            return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def kek() -> Kek:
    return Kek.generate()


@pytest.fixture
def events() -> EventLog:
    return EventLog()


@pytest.fixture
def manager(store_factory, kek, tmp_path, events) -> KeyManager:
    return KeyManager(store_factory(), OpenSslProvider(), kek, ShredLedger(tmp_path / "ledger.json"), events)
