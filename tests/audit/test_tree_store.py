"""The Merkle tree kept beside the records, on SQLite and real PostgreSQL: written in the same
transaction as the records, provable in O(log n) node reads, append-only, and kept through pruning."""

from __future__ import annotations

import threading

import pytest

from tests.audit.factory import POLICY, Backend, events
from ztmesh.audit import merkle, tiles
from ztmesh.audit.errors import AppendOnlyViolation, StoreError


class CountingReader:
    """Counts the node reads a proof costs."""

    def __init__(self, store) -> None:
        self.store = store
        self.reads = 0
        self.nodes = 0

    def read_nodes(self, ids):
        self.reads += 1
        self.nodes += len(ids)
        return self.store.read_nodes(ids)


def leaves_from_records(store) -> list[bytes]:
    _, last = store.bounds()
    return [merkle.leaf_hash(link.canonical) for link in store.links(1, last)]


def test_the_stored_tree_is_the_tree_of_the_records(backend: Backend) -> None:
    store = backend.store()
    sizes = []
    for batch in (1, 1, 2, 5, 8, 13, 30, 64):  # batches that end on and off subtree boundaries
        store.append(events(batch), POLICY)
        sizes.append(store.head().sequence)
    reference = merkle.MemoryNodes()
    leaves = leaves_from_records(store)
    reference.append(leaves)
    size = len(leaves)
    assert size == sizes[-1] == 124
    assert merkle.tree_root(size, store) == reference.frontier.root()
    for index in (0, 1, 63, 64, 100, size - 1):
        reader = CountingReader(store)
        proof = merkle.inclusion_proof(index, size, reader)
        assert merkle.verify_inclusion(leaves[index], index, size, proof, reference.frontier.root())
        assert reader.reads == 1 and reader.nodes <= 2 * size.bit_length()
    for old in sizes[:-1]:
        proof = merkle.consistency_proof(old, size, store)
        assert merkle.verify_consistency(old, size, merkle.tree_root(old, store), merkle.tree_root(size, store), proof)


def test_concurrent_appenders_grow_one_tree(backend: Backend) -> None:
    stores = [backend.store() for _ in range(3)]
    threads = [threading.Thread(target=lambda s=s: [s.append(events(7), POLICY) for _ in range(5)]) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = stores[0]
    reference = merkle.MemoryNodes()
    reference.append(leaves_from_records(store))
    assert reference.frontier.size == 105
    assert merkle.tree_root(105, store) == reference.frontier.root()


def test_tree_nodes_cannot_be_changed(backend: Backend) -> None:
    store = backend.store()
    store.append(events(4), POLICY)
    if backend.kind == "sqlite":
        db = store._db  # type: ignore[attr-defined]
        for statement in ("UPDATE audit_tree SET hash = x'00' WHERE level = 0", "DELETE FROM audit_tree"):
            with pytest.raises(Exception, match="append-only"):
                db.execute(statement)
    else:
        for statement in ("UPDATE audit_tiles SET hashes = '\\x00' WHERE level = 0", "DELETE FROM audit_tiles",
                          "TRUNCATE audit_tiles"):  # fmt: skip
            with pytest.raises(AppendOnlyViolation):
                store._run(lambda c, s=statement: c.execute(s))  # type: ignore[attr-defined]
    assert merkle.tree_root(4, store) == merkle.tree_root(4, store)


def test_a_missing_node_is_an_error_not_another_proof(backend: Backend) -> None:
    store = backend.store()
    store.append(events(3), POLICY)
    with pytest.raises((merkle.ProofError, StoreError), match="not stored"):
        merkle.inclusion_proof(0, 8, store)  # a tree of 8 was never written


def test_a_file_from_before_the_tree_gets_its_tree_when_opened(tmp_path) -> None:
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    backend = Backend("sqlite", str(tmp_path / "old.db"))
    store = backend.store()
    store.append(events(21), POLICY)
    reference = merkle.MemoryNodes()
    reference.append(leaves_from_records(store))
    store.close()
    backend.tamper("DELETE FROM audit_tree")  # what a file written before the tree looks like
    reopened = SqliteAuditStore(backend.dsn)
    assert merkle.tree_root(21, reopened) == reference.frontier.root()
    reopened.append(events(3), POLICY)  # and appends go on growing it
    reference.append(leaves_from_records(reopened)[21:])
    assert merkle.tree_root(24, reopened) == reference.frontier.root()
    reopened.close()


def test_sqlite_reads_tree_nodes_by_index_not_by_scanning_the_tree(tmp_path) -> None:
    """Reading the nodes of a proof costs about the same work on a log 16 times longer: counted in SQLite
    virtual-machine steps (deterministic), not time. A row-value `(level, idx) IN (VALUES ...)` query
    scanned the whole tree, so every append and proof slowed as the log grew."""
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    def steps_to_prove(size: int) -> int:
        store = SqliteAuditStore(str(tmp_path / f"log-{size}.db"))
        for _ in range(size // 256):
            store.append(events(256), POLICY)
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0  # go on

        store._db.set_progress_handler(count, 10)
        merkle.inclusion_proof(size // 3, size, store)
        store._db.set_progress_handler(None, 10)
        store.close()
        return steps[0]

    small, large = steps_to_prove(256), steps_to_prove(4096)
    assert large < small * 3, (small, large)


def _as_version_2(owner_dsn: str, nodes: dict, role: str) -> None:
    """Turn a database back into schema version 2, as a release before tiles left it: one audit_tree row per
    node, writable by the service role."""
    import psycopg

    from ztmesh.audit import pg_schema

    with psycopg.connect(owner_dsn, autocommit=True) as conn, conn.transaction():
        pg_schema.grant_service_role(conn, role)
        conn.execute("CREATE TABLE audit_tree (level smallint NOT NULL, idx bigint NOT NULL, hash bytea NOT NULL, "
                     "PRIMARY KEY (level, idx))")  # fmt: skip
        with conn.cursor().copy("COPY audit_tree (level, idx, hash) FROM STDIN") as copy:
            for (level, idx), digest in nodes.items():
                copy.write_row((level, idx, digest))
        conn.execute(f"GRANT SELECT, INSERT ON audit_tree TO {role}")
        conn.execute("DROP TABLE audit_tiles")
        conn.execute("UPDATE audit_meta SET value = '2' WHERE name = 'schema_version'")


def test_migrate_turns_a_version_2_node_table_into_tiles(request: pytest.FixtureRequest) -> None:
    """`ztmesh audit migrate` upgrades a database written by the previous release: the same tree, read
    from tiles, that the service role goes on appending to; until then the service refuses to start."""
    import subprocess
    import sys
    from pathlib import Path

    from ztmesh.audit.errors import SchemaMissing
    from ztmesh.audit.store_postgres import PostgresAuditStore

    postgres = request.getfixturevalue("postgres")
    owner = postgres.new_database("audit_v2")
    postgres.create_role("audit_v2_svc", "pw")
    store = PostgresAuditStore(owner)
    store.append(events(37), POLICY)
    reference = merkle.MemoryNodes()
    reference.append(leaves_from_records(store))
    store.close()
    _as_version_2(owner, reference.nodes, "audit_v2_svc")
    service_dsn = postgres.dsn_for("audit_v2", "audit_v2_svc", "pw")
    with pytest.raises(SchemaMissing, match="version 2 is not 3.*ztmesh audit migrate"):
        PostgresAuditStore(service_dsn, install=False)

    def migrate(dsn: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ztmesh.cli", "audit", "migrate", "--dsn", dsn]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])

    done = migrate(owner)
    assert done.returncode == 0, done.stderr
    assert "upgraded the audit schema from version 2 to 3" in done.stdout
    assert "already installed" in migrate(owner).stdout
    store = PostgresAuditStore(service_dsn, install=False)
    assert merkle.tree_root(37, store) == reference.frontier.root()
    store.append(events(30), POLICY)  # the service role appends on, to the tiles
    reference.append(leaves_from_records(store)[37:])
    assert merkle.tree_root(67, store) == reference.frontier.root()
    proof = merkle.inclusion_proof(36, 67, store)
    assert merkle.verify_inclusion(reference.nodes[(0, 36)], 36, 67, proof, reference.frontier.root())
    store.close()

    # A node table with a hole would shift every hash after it into the wrong place: refused, nothing changed.
    holed = postgres.new_database("audit_v2_holed")
    store = PostgresAuditStore(holed)
    store.append(events(20), POLICY)
    store.close()
    nodes = dict(reference.nodes)
    del nodes[(0, 5)]
    _as_version_2(holed, {k: v for k, v in nodes.items() if (k[1] + 1) << k[0] <= 20}, "audit_v2_svc")
    done = migrate(holed)
    assert done.returncode == 1 and "hole in tile (0, 0)" in done.stderr, done.stderr
    with pytest.raises(SchemaMissing, match="version 2"):
        PostgresAuditStore(holed, install=False)


def test_a_forged_wider_tile_does_not_steer_the_appender(request: pytest.FixtureRequest) -> None:
    """The service role may INSERT tiles (PostgreSQL). One wider than the tree's size implies (a forged newest
    row of the edge) must not become the frontier new records are hashed onto: the appender takes the exact
    width."""
    from ztmesh.audit.store_postgres import PostgresAuditStore

    store = PostgresAuditStore(request.getfixturevalue("postgres").new_database("audit_forged_tile"))
    store.append(events(37), POLICY)  # the edge's level-0 tile: (0, 2) of width 5
    forged = bytes(range(32)) * tiles.hashes_in(6)
    store._run(lambda c: c.execute(  # type: ignore[attr-defined]
        "INSERT INTO audit_tiles (level, tile, width, hashes) VALUES (0, 2, 6, %s)", (forged,)))  # fmt: skip
    store.append(events(5), POLICY)
    reference = merkle.MemoryNodes()
    reference.append(leaves_from_records(store))
    assert merkle.tree_root(42, store) == reference.frontier.root()
    store.close()


def test_an_append_refused_at_its_commit_stores_nothing_and_the_next_one_lands(
    request: pytest.FixtureRequest,
) -> None:
    """PostgreSQL's append begins and commits its transaction by hand, the commit sharing a round trip with
    the tiles. A tile row the service role planted where the next append writes makes that INSERT fail
    after the records' COPY went in: all of it is rolled back, and the store appends on."""
    from ztmesh.audit.store_postgres import PostgresAuditStore

    store = PostgresAuditStore(request.getfixturevalue("postgres").new_database("audit_refused_commit"))
    store.append(events(37), POLICY)  # the edge's level-0 tile: (0, 2) of width 5
    planted = bytes(32) * tiles.hashes_in(6)
    store._run(lambda c: c.execute(  # type: ignore[attr-defined]
        "INSERT INTO audit_tiles (level, tile, width, hashes) VALUES (0, 2, 6, %s)", (planted,)))  # fmt: skip
    with pytest.raises(StoreError, match="duplicate key"):
        store.append(events(1), POLICY)  # would write (0, 2) of width 6
    assert store.head().sequence == 37 and store.bounds() == (1, 37)
    store.append(events(5), POLICY)  # (0, 2) of width 10
    reference = merkle.MemoryNodes()
    reference.append(leaves_from_records(store))
    assert store.head().sequence == 42 and merkle.tree_root(42, store) == reference.frontier.root()
    store.close()
