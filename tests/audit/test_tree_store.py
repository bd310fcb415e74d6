"""The Merkle tree kept beside the records, on SQLite and real PostgreSQL: written in the same
transaction as the records, provable in O(log n) node reads, append-only, and kept through pruning."""

from __future__ import annotations

import threading

import pytest

from tests.audit.factory import POLICY, Backend, events
from ztmesh.audit import merkle
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
        for statement in ("UPDATE audit_tree SET hash = '\\x00' WHERE level = 0", "TRUNCATE audit_tree"):
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
