"""The emitter's durable spool against a real store: outages, crashes, a full spool, torn writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.audit.factory import POLICY, Backend, event, events
from ztmesh.audit.errors import SpoolFull, SpoolLocked
from ztmesh.audit.record import EventV1
from ztmesh.audit.sink import LocalSink
from ztmesh.audit.spool import SpoolEmitter, SpoolSettings
from ztmesh.audit.store import QueryFilter
from ztmesh.audit.trail import verify_store
from ztmesh.mesh.auditing import AuditEvent

ROOT = Path(__file__).resolve().parents[2]


def settings(tmp_path: Path, **overrides) -> SpoolSettings:
    return SpoolSettings(**{"directory": tmp_path / "spool", "retry_initial": 0.05, "retry_max": 0.3, **overrides})


def stored_ids(backend: Backend) -> list[str]:
    store = backend.store()
    ids: list[str] = []
    token_after = 0
    while True:
        page = store.query(QueryFilter(newest_first=False), token_after, 1000)
        if not page:
            return ids
        ids += [r.event.event_id for r in page]
        token_after = page[-1].sequence


def test_events_emitted_during_an_outage_are_stored_once_after_it(backend: Backend, tmp_path: Path) -> None:
    backend.store()  # schema in place, as the audit service would have made it
    outage = backend.start_outage()
    emitter = SpoolEmitter(LocalSink(backend.sink_store, POLICY), settings(tmp_path))
    emitted: list[str] = []
    lock = threading.Lock()

    def emit_some(offset: int) -> None:
        for i in range(10):
            e = AuditEvent(service="policy", action="decide", outcome="DENY", subject=f"t{offset}-{i}",
                           details={"ip": "10.2.3.4", "authorization": "Bearer x"})  # fmt: skip
            emitter.emit(e)  # returns: durable in the spool, audit being down
            with lock:
                emitted.append(e.event_id)

    threads = [threading.Thread(target=emit_some, args=(n,)) for n in range(4)]  # concurrent: group commit
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(emitted) == 40 and emitter.pending() == 40
    backend.end_outage(outage)
    assert emitter.flush(timeout=30)
    emitter.close()
    ids = stored_ids(backend)
    assert sorted(ids) == sorted(emitted)  # every one, once
    record = backend.store().query(QueryFilter(), 0, 1)[0]
    assert record.event.masked == ("/authorization", "/ip") and "Bearer" not in record.event.details
    assert verify_store(backend.store(), None).ok


@pytest.mark.slow
@pytest.mark.parametrize("outage", [True, False], ids=["audit-down", "audit-up-spool-first"])
def test_sigkill_mid_stream_loses_no_acknowledged_event_and_stores_none_twice(
    backend: Backend, tmp_path: Path, outage: bool
) -> None:
    backend.store()
    spool = tmp_path / "spool"
    handle = backend.start_outage() if outage else None
    cmd = [sys.executable, "-m", "tests.audit.emitter_child", "emit", str(spool), backend.kind, backend.dsn]
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    acked: list[str] = []
    assert child.stdout is not None
    for line in child.stdout:
        acked.append(line.strip())
        if len(acked) == 120:
            os.kill(child.pid, signal.SIGKILL)  # mid-stream: more emits are in flight
            break
    acked += [line.strip() for line in child.stdout if line.strip()]
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    if handle is not None:
        backend.end_outage(handle)
    drain = subprocess.run([*cmd[:3], "drain", *cmd[4:]], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert drain.returncode == 0, drain.stdout + drain.stderr
    ids = stored_ids(backend)
    assert len(ids) == len(set(ids)), "an event was stored twice"
    missing = set(acked) - set(ids)
    assert not missing, f"{len(missing)} acknowledged events lost"
    assert verify_store(backend.store(), None).ok


def test_a_full_spool_fails_closed(backend: Backend, tmp_path: Path) -> None:
    backend.store()
    outage = backend.start_outage()
    emitter = SpoolEmitter(LocalSink(backend.sink_store, POLICY), settings(tmp_path, max_bytes=4096))
    durable = 0
    with pytest.raises(SpoolFull, match="fail closed"):
        for i in range(100):
            emitter.emit_event(event(i))
            durable += 1
    assert 0 < durable < 100
    backend.end_outage(outage)
    assert emitter.flush(timeout=30)
    emitter.close()
    assert len(stored_ids(backend)) == durable  # the refused one was not recorded; the rest all were


def test_a_full_spool_can_block_until_audit_returns(backend: Backend, tmp_path: Path) -> None:
    backend.store()
    outage = backend.start_outage()
    emitter = SpoolEmitter(LocalSink(backend.sink_store, POLICY),
                           settings(tmp_path, max_bytes=3000, when_full="block", block_timeout=60))  # fmt: skip
    filled = 0
    while emitter.files.used_bytes() < 2500:
        emitter.emit_event(event(filled))
        filled += 1
    done = threading.Event()

    def emit_then_signal() -> None:
        emitter.emit_event(event(999))
        done.set()

    blocked = threading.Thread(target=emit_then_signal)
    blocked.start()
    assert not done.wait(0.5)  # waits for room instead of failing
    backend.end_outage(outage)
    assert done.wait(30)
    assert emitter.flush(timeout=30)
    emitter.close()
    assert len(stored_ids(backend)) == filled + 1


def test_a_torn_last_frame_is_dropped_and_the_rest_ships(tmp_path: Path) -> None:
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    db = tmp_path / "a.db"
    SqliteAuditStore(db).close()
    lock = Backend("sqlite", str(db)).start_outage()
    first = SpoolEmitter(LocalSink(lambda: SqliteAuditStore(db, busy_timeout=0.1)), settings(tmp_path))
    batch = events(5)
    for e in batch:
        first.emit_event(e)
    first._stopping.set()  # simulate a crash: threads stop, nothing is flushed or cleaned
    for t in first._threads:
        t.join()
    first._lock_file.close()
    segment = sorted((tmp_path / "spool").glob("*.seg"))[-1]
    size = segment.stat().st_size
    with open(segment, "ab") as handle:
        handle.write(b'\x00\x00\x01\x00\x00\x00\x00\x00{"torn')  # a header promising 256 bytes, cut short
    lock.execute("ROLLBACK")
    second = SpoolEmitter(LocalSink(lambda: SqliteAuditStore(db)), settings(tmp_path))
    assert second.flush(timeout=30)
    second.close()
    assert [p.name for p in (tmp_path / "spool" / "corrupt").iterdir()] == [f"{segment.stem}-{size}-torn.bin"]
    stored = SqliteAuditStore(db)
    assert sorted(r.event.event_id for r in stored.query(QueryFilter(), 0, 100)) == sorted(e.event_id for e in batch)


def test_an_event_audit_refuses_is_set_aside_and_the_rest_ship(backend: Backend, tmp_path: Path) -> None:
    store = backend.store()
    original = event(1)
    store.append([original], POLICY)
    impostor = event(2, event_id=original.event_id)  # same id, other content: audit refuses it for good
    emitter = SpoolEmitter(LocalSink(backend.sink_store, POLICY), settings(tmp_path, direct=False))
    after = events(3, start=10)
    for e in [impostor, *after]:
        emitter.emit_event(e)
    assert emitter.flush(timeout=30)
    emitter.close()
    assert sorted(stored_ids(backend)) == sorted([original.event_id, *(e.event_id for e in after)])
    rejected = (tmp_path / "spool" / "rejected.jsonl").read_text()
    assert original.event_id in rejected and "different contents" in rejected


def test_one_spool_one_process(tmp_path: Path) -> None:
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    sink = LocalSink(SqliteAuditStore(tmp_path / "a.db"))
    first = SpoolEmitter(sink, settings(tmp_path))
    with pytest.raises(SpoolLocked, match="in use"):
        SpoolEmitter(sink, settings(tmp_path))
    first.close()


def test_emit_refuses_bad_events_before_spooling(tmp_path: Path) -> None:
    from ztmesh.audit.errors import InvalidEvent
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    emitter = SpoolEmitter(LocalSink(SqliteAuditStore(tmp_path / "a.db")), settings(tmp_path))
    with pytest.raises(InvalidEvent, match="action"):
        emitter.emit(AuditEvent(service="policy", action="", outcome="ALLOW"))
    assert emitter.pending() == 0
    emitter.close()
    time.sleep(0)


# --- what issue 13 found: batch limits, a dying shipper, damaged frames, unclaimed slots -----------------


def crash(emitter: SpoolEmitter) -> None:
    """Stop an emitter the way SIGKILL would: threads end, nothing is flushed, the slot lock is let go."""
    emitter._stopping.set()
    for t in emitter._threads:
        t.join()
    emitter.files.close()
    emitter._lock_file.close()


def spooled_unshipped(db: Path, directory: Path, n: int) -> list[EventV1]:
    """`n` events durable in the spool at `directory` and not in the SQLite trail at `db` (audit was down)."""
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    SqliteAuditStore(db).close()
    outage = Backend("sqlite", str(db)).start_outage()
    emitter = SpoolEmitter(LocalSink(lambda: SqliteAuditStore(db, busy_timeout=0.05)), SpoolSettings(directory))
    batch = events(n)
    for e in batch:
        emitter.emit_event(e)
    crash(emitter)
    outage.execute("ROLLBACK")
    outage.close()
    return batch


def trail_ids(db: Path) -> list[str]:
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    store = SqliteAuditStore(db)
    try:
        return stored_ids(Backend("sqlite", str(db), stores=[store]))
    finally:
        store.close()


def test_batches_follow_the_receivers_limit(tmp_path: Path, signer) -> None:
    from ztmesh.audit.store_sqlite import SqliteAuditStore
    from ztmesh.audit.trail import AuditTrail, TrailSettings

    emitted = spooled_unshipped(tmp_path / "a.db", tmp_path / "spool", 120)
    store = SqliteAuditStore(tmp_path / "a.db")
    trail = AuditTrail(store, signer, signer, TrailSettings(max_batch=10))
    emitter = SpoolEmitter(LocalSink(trail, POLICY), settings(tmp_path, batch_max=50))
    assert emitter.flush(timeout=30)
    emitter.close()
    assert emitter._batch_max == 10
    ids = [r.event.event_id for r in store.query(QueryFilter(newest_first=False), 0, 1000)]
    assert sorted(ids) == sorted(e.event_id for e in emitted)


def test_a_group_larger_than_the_receiver_takes_goes_in_parts(tmp_path: Path, signer) -> None:
    from ztmesh.audit.store_sqlite import SqliteAuditStore
    from ztmesh.audit.trail import AuditTrail, TrailSettings

    store = SqliteAuditStore(tmp_path / "a.db")
    trail = AuditTrail(store, signer, signer, TrailSettings(max_batch=3))
    emitter = SpoolEmitter(LocalSink(trail, POLICY), settings(tmp_path))
    from ztmesh.audit.spool import _Pending

    left = emitter._append_direct([_Pending(e) for e in events(8)])  # one group of 8 concurrent emits
    assert left == [] and emitter._batch_max == 3
    emitter.close()
    assert len(store.query(QueryFilter(), 0, 100)) == 8


def test_no_exception_ends_the_shipper(tmp_path: Path) -> None:
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    db = tmp_path / "a.db"
    batch = spooled_unshipped(db, tmp_path / "spool", 5)
    failures = iter([RuntimeError("a bug, not an outage"), RuntimeError("again")])

    def open_store() -> SqliteAuditStore:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return SqliteAuditStore(db)

    emitter = SpoolEmitter(LocalSink(open_store), settings(tmp_path))
    assert emitter.flush(timeout=30)
    assert emitter._shipper.is_alive()
    emitter.close()
    assert sorted(trail_ids(db)) == sorted(e.event_id for e in batch)


@pytest.mark.parametrize("where", ["payload", "length"])
def test_a_corrupt_frame_inside_a_segment_is_set_aside_loudly_and_the_rest_ships(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    from ztmesh.audit.spoolfile import _scan

    db = tmp_path / "a.db"
    batch = spooled_unshipped(db, tmp_path / "spool", 100)
    segment = sorted((tmp_path / "spool").glob("*.seg"))[-1]
    data = bytearray(segment.read_bytes())
    start = list(_scan(bytes(data)))[50][0]
    data[start + (20 if where == "payload" else 1)] ^= 0x10  # one flipped bit in frame 50
    segment.write_bytes(bytes(data))
    emitter, damage, stored = ship_spool(db, tmp_path)
    assert stored >= {e.event_id for i, e in enumerate(batch) if i != 50}  # the 49 after it shipped too
    assert batch[50].event_id not in stored
    quarantined = list((tmp_path / "spool" / "corrupt").iterdir())
    assert [p.name for p in quarantined] == [f"{1:012d}-{start}.bin"]
    assert quarantined[0].read_bytes() == bytes(data[start : list(_scan(bytes(data)))[51][0]])
    assert emitter.damaged == 1
    assert any("frame 50" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert len(damage) == 1 and '"frame":50' in damage[0].event.details


def test_a_flipped_bit_in_the_last_frames_length_is_damage_not_a_torn_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The length now runs past the end of the file, as a torn write's would; but the frame was fsync'd
    and acknowledged, so it must be set aside and reported, not cut off as never acknowledged."""
    from ztmesh.audit.spoolfile import _scan

    db = tmp_path / "a.db"
    batch = spooled_unshipped(db, tmp_path / "spool", 10)
    segment = sorted((tmp_path / "spool").glob("*.seg"))[-1]
    data = bytearray(segment.read_bytes())
    start, end, _payload = list(_scan(bytes(data)))[-1]
    data[start + 1] ^= 0x01  # one bit in frame 9's length: 65536 bytes longer, past the end of the file
    assert int.from_bytes(data[start : start + 4], "big") > len(data) - start
    segment.write_bytes(bytes(data))
    emitter, damage, stored = ship_spool(db, tmp_path)
    assert stored >= {e.event_id for e in batch[:9]} and batch[9].event_id not in stored
    assert segment.read_bytes().startswith(bytes(data))  # kept in place, not truncated
    quarantined = list((tmp_path / "spool" / "corrupt").iterdir())
    assert [p.name for p in quarantined] == [f"{1:012d}-{start}.bin"]  # not "-torn"
    assert quarantined[0].read_bytes() == bytes(data[start:end])
    assert emitter.damaged == 1
    assert any("segment 1 frame 9 " in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert not any("torn" in r.getMessage() for r in caplog.records)
    assert len(damage) == 1 and '"frame":9' in damage[0].event.details and '"torn":false' in damage[0].event.details


def ship_spool(db: Path, tmp_path: Path) -> tuple[SpoolEmitter, list, set[str]]:
    """Open the spool under `tmp_path` onto the trail at `db` and ship it all: the emitter (closed), the
    damage records it wrote, and the event ids the trail holds."""
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    emitter = SpoolEmitter(LocalSink(lambda: SqliteAuditStore(db), POLICY), settings(tmp_path, service="policy"))
    assert emitter.flush(timeout=30)
    damage = damage_records(db)  # recorded by a thread of the shipper's: wait for it before closing
    emitter.close()
    return emitter, damage, set(trail_ids(db))


def damage_records(db: Path, timeout: float = 10.0) -> list:
    """The trail's `audit.spool_damaged` records, once there: the shipper records damage from a thread of
    its own, so the spool can be empty (flush returned) a moment before that record is stored."""
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    store = SqliteAuditStore(db)
    deadline = time.monotonic() + timeout
    try:
        while True:
            found = store.query(QueryFilter(action="audit.spool_damaged"), 0, 10)
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)
    finally:
        store.close()


def _frame(payload: bytes) -> bytes:
    import zlib

    return len(payload).to_bytes(4, "big") + zlib.crc32(payload).to_bytes(4, "big") + payload


_PAYLOAD = b'{"event_id":"0190f1e2-0000-7000-8000-000000000001","v":1}'


@pytest.mark.parametrize(
    ("tail", "torn"),
    [
        (_frame(_PAYLOAD)[:3], True),  # header cut short
        (_frame(_PAYLOAD)[:8], True),  # header written, no payload yet
        (_frame(_PAYLOAD)[:20], True),  # payload cut short
        (bytes(512), True),  # the size grew, the data never landed
        (b"\x00\x01" + _frame(_PAYLOAD)[2:], False),  # length flipped (+65536): the whole payload is there
        (b"\x7f" + _frame(_PAYLOAD)[1:20], False),  # a length no frame in a segment can have
        (_frame(_PAYLOAD)[:4] + b"\xff\xff\xff\xff" + b"x" * 20, False),  # bytes no payload starts with
        (b"\x00\x00\x00\x00" + _frame(_PAYLOAD)[4:], False),  # length zeroed, payload intact
    ],
    ids=["header", "no-payload", "payload", "zeros", "length-flip", "huge-length", "not-json", "length-zeroed"],
)
def test_only_what_an_interrupted_write_leaves_counts_as_torn(tail: bytes, torn: bool) -> None:
    from ztmesh.audit.spoolfile import _is_torn

    data = _frame(b'{"first":1}') + tail
    assert _is_torn(data, len(_frame(b'{"first":1}')), 16 * 1024 * 1024) is torn


def test_unclaimed_slots_are_drained_by_a_live_process(tmp_path: Path) -> None:
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    db = tmp_path / "a.db"
    base = tmp_path / "spool" / "policy"
    orphaned = spooled_unshipped(db, base / "1", 30)  # a second process that crashed and never came back
    live = SpoolEmitter(LocalSink(lambda: SqliteAuditStore(db), POLICY),
                        SpoolSettings(base / "0", adopt=True, adopt_interval=0.05))  # fmt: skip
    deadline = time.monotonic() + 30
    while set(e.event_id for e in orphaned) - set(trail_ids(db)):
        assert time.monotonic() < deadline, "the unclaimed slot was never drained"
        time.sleep(0.05)
    live.close()
    assert sorted(trail_ids(db)) == sorted(e.event_id for e in orphaned)
    again = SpoolEmitter(LocalSink(lambda: SqliteAuditStore(db), POLICY), SpoolSettings(base / "1"))
    assert again.pending() == 0  # the adopter let go of the slot, and left it empty
    again.close()


def test_a_full_spool_takes_events_again_once_audit_answers(backend: Backend, tmp_path: Path) -> None:
    backend.store()
    outage = backend.start_outage()
    emitter = SpoolEmitter(LocalSink(backend.sink_store, POLICY), settings(tmp_path, max_bytes=4096, retry_max=60))
    with pytest.raises(SpoolFull):
        for i in range(100):
            emitter.emit_event(event(i))
    backend.end_outage(outage)
    emitter.emit_event(event(1000))  # straight to audit: no waiting for the shipper's next attempt
    assert emitter.flush(timeout=30)
    emitter.close()


def test_a_stuck_shipper_says_so_and_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import REGISTRY

    from ztmesh.audit.store_sqlite import SqliteAuditStore

    db = tmp_path / "a.db"
    SqliteAuditStore(db).close()
    outage = Backend("sqlite", str(db)).start_outage()
    spool = settings(tmp_path, stall_after=0.2)
    emitter = SpoolEmitter(LocalSink(lambda: SqliteAuditStore(db, busy_timeout=0.05)), spool)
    emitter.emit_event(event(1))

    def stalled() -> float | None:
        return REGISTRY.get_sample_value("ztmesh_audit_spool_stalled", {"spool": str(spool.directory)})

    deadline = time.monotonic() + 30
    while stalled() != 1:
        assert time.monotonic() < deadline, "a shipper making no progress was never reported"
        time.sleep(0.05)
    assert any("nothing shipped" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    outage.execute("ROLLBACK")
    outage.close()
    assert emitter.flush(timeout=30)
    while stalled() != 0:
        assert time.monotonic() < deadline, "the stall was never cleared"
        time.sleep(0.05)
    emitter.close()
    assert trail_ids(db) and any("shipping again" in r.getMessage() for r in caplog.records)


def test_the_audit_service_names_its_batch_limit_and_the_grpc_sink_reads_it(
    pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.mesh import running, settings_for
    from ztmesh.audit.app import build_app
    from ztmesh.audit.client import GrpcAuditSink
    from ztmesh.audit.errors import BatchRefused
    from ztmesh.audit.spool import _Pending

    monkeypatch.setenv("ZTMESH_AUDIT_MAX_BATCH", "3")
    mesh = settings_for(pki, tmp_path)
    with running(build_app(mesh), mesh) as server, pki.channel("policy", server.port) as channel:
        sink = GrpcAuditSink(channel)
        with pytest.raises(BatchRefused, match="at most 3 .*ZTMESH_AUDIT_MAX_BATCH") as refused:
            sink.append(events(5))
        assert refused.value.limit == 3
        emitter = SpoolEmitter(sink, settings(tmp_path))
        group = events(7)
        assert emitter._append_direct([_Pending(e) for e in group]) == []  # one group of 7 concurrent emits
        assert emitter._batch_max == 3
        emitter.close()
        stored = [r for start in range(0, 7, 3) for r in sink.append(group[start : start + 3])]
        assert len(stored) == 7 and all(r.duplicate for r in stored)  # every one was in the trail already


@pytest.mark.parametrize("payload", [b"{not json", b'{"v":99,"event_id":"x"}'], ids=["not-json", "not-an-event"])
def test_an_intact_frame_that_is_no_event_is_set_aside_and_the_rest_ships(tmp_path: Path, payload: bytes) -> None:
    import json

    from ztmesh.audit.spoolfile import SpoolFiles
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    db = tmp_path / "a.db"
    before = spooled_unshipped(db, tmp_path / "spool", 3)
    after = events(3, start=10)
    files = SpoolFiles(tmp_path / "spool", 16 * 1024 * 1024)
    files.append([payload, *(json.dumps(e.to_json()).encode() for e in after)])
    files.close()
    emitter = SpoolEmitter(LocalSink(lambda: SqliteAuditStore(db), POLICY), settings(tmp_path))
    assert emitter.flush(timeout=30)
    emitter.close()
    assert sorted(trail_ids(db)) == sorted(e.event_id for e in [*before, *after])
    assert [p.read_bytes() for p in (tmp_path / "spool" / "corrupt").iterdir()] == [payload]
