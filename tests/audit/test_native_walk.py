"""The native walk (native/audit) against the Python code it stands in for: the canonical record it
builds from a binary COPY tuple is `record.assemble`'s, byte for byte, on random values (every kind of
JSON escaping, all four-digit years); it refuses what it cannot spell; and over PostgreSQL it reaches the
same answers as the Python walk — intact, rows moved on disk, damage, and its subtree frontiers."""

from __future__ import annotations

import random
import struct
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from tests.audit.factory import POLICY, Backend, event, events, verifiable_trail
from ztmesh.audit import canonical
from ztmesh.audit.chain import Problem
from ztmesh.audit.parallel_verify import _walk_fast, _walk_native, native_walk, verify_store_parallel
from ztmesh.audit.record import GENESIS_HASH, SCHEMA_VERSION, assemble, quoted
from ztmesh.audit.signing import LocalMlDsaSigner
from ztmesh.audit.store_postgres import PostgresAuditStore
from ztmesh.audit.trail import verify_store

SCHEMA = str(SCHEMA_VERSION).encode()
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _field(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


def _tuple(values: dict) -> bytes:
    """One binary COPY tuple of BINARY_VERIFY_COLUMNS, as PostgreSQL sends it."""
    micros = lambda t: struct.pack(">q", (t - PG_EPOCH) // timedelta(microseconds=1))  # noqa: E731
    texts = ("service", "emitter", "caller", "subject", "action", "resource", "outcome", "decision_id", "trace_id")
    columns = [
        struct.pack(">q", values["sequence"]), micros(values["recorded_at"]), values["event_id"].bytes,
        micros(values["time"]), *(values[name].encode() for name in texts), values["prev_hash"], values["hash"],
        values["masked"].encode(), values["details"].encode(),
    ]  # fmt: skip
    return struct.pack(">h", len(columns)) + b"".join(_field(c) for c in columns)


def _expected(values: dict) -> bytes:
    q = lambda name: quoted(values[name])  # noqa: E731
    return assemble(
        q("action"), q("caller"), q("decision_id"), values["details"].encode(), q("emitter"),
        quoted(str(values["event_id"])), values["masked"].encode(), q("outcome"),
        quoted(canonical.format_time(values["recorded_at"])), q("resource"), str(values["sequence"]).encode(),
        q("service"), q("subject"), quoted(canonical.format_time(values["time"])), q("trace_id"),
    )  # fmt: skip


ALPHABET = ["a", "Z", "0", " ", '"', "\\", "/", "\n", "\r", "\t", "\b", "\f", "\x00", "\x01", "\x1f", "\x7f",
            "ü", "€", "😀", "\u2028", "{", "}", ":", ","]  # fmt: skip


def _random_values(rng: random.Random) -> dict:
    text = lambda: "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 12)))  # noqa: E731
    moment = lambda: datetime(1000, 1, 1, tzinfo=UTC) + timedelta(  # noqa: E731
        microseconds=rng.randrange((datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
                                    - datetime(1000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)))  # fmt: skip
    return {
        "sequence": rng.randrange(1, 2**63), "recorded_at": moment(), "event_id": uuid.UUID(int=rng.getrandbits(128)),
        "time": moment(), **{name: text() for name in ("service", "emitter", "caller", "subject", "action",
                                                         "resource", "outcome", "decision_id", "trace_id")},
        "prev_hash": rng.randbytes(32), "hash": rng.randbytes(32),
        "masked": canonical.dumps(["/" + text()]), "details": canonical.dumps({text(): text(), "n": 1.5}),
    }  # fmt: skip


def test_the_canonical_record_is_assembles_on_random_values(native: ModuleType) -> None:
    rng = random.Random(20261201)
    for _ in range(3000):
        values = _random_values(rng)
        assert native.canonical_record(_tuple(values), SCHEMA) == _expected(values), values


@pytest.mark.parametrize(
    "change",
    [
        {"recorded_at": datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC)},  # canonical.format_time spells it otherwise
        {"time": datetime(1, 1, 1, tzinfo=UTC)},
        {"subject": "\udcff"},  # not UTF-8 (a surrogate escape): PostgreSQL never sends it, so it is tampering
    ],
    ids=["year 999", "year 1", "not UTF-8"],
)
def test_what_it_cannot_spell_is_a_doubt_not_a_guess(native: ModuleType, change: dict) -> None:
    values = {**_random_values(random.Random(1)), **change}
    if "subject" in change:
        row = _tuple({**values, "subject": "x"}).replace(_field(b"x"), _field(b"\xed\xb3\xbf"), 1)
    else:
        row = _tuple(values)
    assert native.canonical_record(row, SCHEMA) is None


def test_null_and_cut_tuples_are_doubts(native: ModuleType) -> None:
    row = _tuple(_random_values(random.Random(2)))
    assert native.canonical_record(row[:-1], SCHEMA) is None  # cut short
    null = struct.pack(">h", 17) + struct.pack(">i", -1) + row[6:]
    assert native.canonical_record(null, SCHEMA) is None
    header = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
    walk = native.BinaryWalk(1, GENESIS_HASH, {}, None, [], 3, SCHEMA)
    assert walk.feed(header + row[:40])  # the rest of the tuple may come in the next chunk ...
    assert walk.finish()[:3] == (0, GENESIS_HASH, False)  # ... but a stream that ends so is not intact
    walk = native.BinaryWalk(1, GENESIS_HASH, {}, None, [], 3, SCHEMA)
    assert walk.feed(header) and not walk.finish()[2]  # no trailer
    assert not native.BinaryWalk(1, GENESIS_HASH, {}, None, [], 3, SCHEMA).feed(b"PGCOPY\n\xff\r\n\x01" + bytes(8))


@pytest.fixture
def pg_backend(request: pytest.FixtureRequest, native: ModuleType) -> Backend:
    name = "native_" + request.node.name.split("[")[0][-40:]
    backend = Backend("postgres", request.getfixturevalue("postgres").new_database(name.lower()))
    request.addfinalizer(backend.close)
    return backend


def test_postgresql_is_walked_natively(pg_backend: Backend, signer: LocalMlDsaSigner) -> None:
    trail = verifiable_trail(pg_backend, signer)
    assert isinstance(trail.store, PostgresAuditStore) and native_walk(trail.store)


def test_frontiers_and_roots_are_the_python_walks(pg_backend: Backend, signer: LocalMlDsaSigner) -> None:
    trail = verifiable_trail(pg_backend, signer)
    odd = [event(i, subject='o"brien\\', details={"note": 'a\nb\t"c"\\ \u0001 ü 😀'}) for i in range(5)]
    trail.append(events(9) + odd + events(12), POLICY)
    store = trail.store
    heads = {7: [store.hash_at(7) or b""], 14: [store.hash_at(14) or b""]}
    for first, seed in ((1, []), (9, None)):
        anchor = store.hash_at(first - 1) or GENESIS_HASH
        native = _walk_native(store, first, 26, anchor, heads, seed, [11, 21, 26], 3)
        python = _walk_fast(store.links(first, 26), first, anchor, heads, seed, [11, 21, 26], 3)
        assert native == python and native[2] and native[0] == 27 - first


def test_rows_moved_on_disk_are_read_again_in_order(pg_backend: Backend, signer: LocalMlDsaSigner) -> None:
    """An UPDATE that changes nothing still writes a new row version at the end of the table: the walk
    meets record 5 last, reads on in sequence order from there, and finds the log intact."""
    trail = verifiable_trail(pg_backend, signer)
    trail.append(events(20), POLICY)
    pg_backend.tamper("UPDATE audit_records SET subject = subject WHERE sequence IN (5, 12)")
    store = trail.store
    assert [r[0] for r in _disk_order(store)][:6] == [1, 2, 3, 4, 6, 7]
    assert _walk_native(store, 1, 20, GENESIS_HASH, {}, [], [], 3)[:3] == (20, store.hash_at(20), True)
    serial, native = verify_store(store, signer), verify_store_parallel(store, signer, workers=1)
    assert serial.ok and native == serial


def _first_pass(store: PostgresAuditStore, native: ModuleType, last: int, **limits: int) -> tuple:
    """What one walk over the records as they lie on disk says, before any reading again in order."""
    walk = native.BinaryWalk(1, GENESIS_HASH, {}, [], [], 3, SCHEMA, **limits)
    for chunk in store.binary_records(1, last, ordered=False):
        walk.feed(chunk)
    return tuple(walk.finish())[:3]


def test_records_before_their_turn_wait_for_it(pg_backend: Backend, signer: LocalMlDsaSigner, native) -> None:
    """What autovacuum's free-space map does to an append-only table: rows of a later append lie before
    an earlier one. The walk holds those that come early until their turn, so it needs no second, ordered
    read (which costs PostgreSQL its index walk over the rest of the log); past its bound it doubts."""
    trail = verifiable_trail(pg_backend, signer)
    trail.append(events(20), POLICY)
    pg_backend.tamper("UPDATE audit_records SET subject = subject WHERE sequence IN (5, 12)")  # 5 and 12 go last
    # A big log's range is read by a scan of the table; this small one's would be read through the index.
    pg_backend.tamper("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET enable_indexscan = off', "
                      "current_database()); EXECUTE format('ALTER DATABASE %I SET enable_bitmapscan = off', "
                      "current_database()); END $$")  # fmt: skip
    store = pg_backend.store()
    assert [r[0] for r in _disk_order(store)][-2:] == [5, 12]
    assert _first_pass(store, native, 20) == (20, store.hash_at(20), True)
    # 6, 7 and 8 wait for 5; 9 is one too many.
    assert _first_pass(store, native, 20, early_limit=3) == (4, store.hash_at(4), False)
    pg_backend.tamper("DELETE FROM audit_records WHERE sequence = 12")
    assert _first_pass(store, native, 20) == (11, store.hash_at(11), False)  # 13..20 wait for one that never comes


def _disk_order(store: PostgresAuditStore) -> list[tuple[int]]:
    with store.pool.connection() as conn:
        return conn.execute("SELECT sequence FROM audit_records").fetchall()


DAMAGE = [
    ("altered record", "UPDATE audit_records SET subject = 'mallory' WHERE sequence = 50", Problem.HASH_MISMATCH),
    ("altered time", "UPDATE audit_records SET time = time + interval '1 microsecond' WHERE sequence = 33",
     Problem.HASH_MISMATCH),  # fmt: skip
    ("quote in a field", "UPDATE audit_records SET resource = 'patient/\"1' WHERE sequence = 60",
     Problem.HASH_MISMATCH),  # fmt: skip
    ("deleted record", "DELETE FROM audit_records WHERE sequence = 41", Problem.GAP),
    ("broken link", "UPDATE audit_records SET prev_hash = hash WHERE sequence = 20", Problem.PREV_HASH_MISMATCH),
    ("renumbered", "UPDATE audit_records SET sequence = 1000 WHERE sequence = 30", Problem.GAP),
    ("rewritten tree", "UPDATE audit_checkpoints SET tree_root = head_hash WHERE sequence = 63", Problem.TREE_MISMATCH),
]


@pytest.mark.parametrize(("statement", "problem"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_damage_is_reported_as_the_python_walk_reports_it(
    pg_backend: Backend, signer: LocalMlDsaSigner, statement: str, problem: Problem
) -> None:
    trail = verifiable_trail(pg_backend, signer)
    for _ in range(12):
        trail.append(events(7), POLICY)
    pg_backend.tamper(statement)
    serial = verify_store(trail.store, None)
    for workers in (1, 2):
        native = verify_store_parallel(trail.store, None, workers=workers, bits=3, min_parallel=1)
        assert (serial.ok, serial.problem) == (False, problem) and native == serial


def test_a_stretch_of_sqlite_is_walked_in_python(tmp_path: Path, signer: LocalMlDsaSigner) -> None:
    backend = Backend("sqlite", str(tmp_path / "audit.db"))
    try:
        assert not native_walk(verifiable_trail(backend, signer).store)
    finally:
        backend.close()
