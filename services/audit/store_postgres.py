"""PostgreSQL audit store (psycopg 3, pooled): batched COPY appends serialized by an advisory lock,
keyset-paged queries, partition retention, and a COPY-based reader that feeds the verifier fast.

The schema lives in pg_schema.py; the service's role needs only INSERT and SELECT on it.
"""

from __future__ import annotations

import itertools
import re
from binascii import unhexlify
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext, suppress
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool, PoolTimeout

from ztmesh.audit import canonical, merkle, pg_schema, tiles
from ztmesh.audit.chain import ChainHead, ChainLink, Checkpoint
from ztmesh.audit.errors import AppendOnlyViolation, SchemaMissing, StoreError
from ztmesh.audit.record import (
    SCHEMA_VERSION,
    AuditRecord,
    EncodedEvents,
    EventV1,
    assemble,
    masked_json,
    quoted,
    record_parts,
)
from ztmesh.audit.store import (
    CHECKPOINT_COLUMNS,
    DEFAULT_MIN_RETENTION,
    RECORD_COLUMNS,
    AppendResult,
    AppendTip,
    BatchPlan,
    Clock,
    PrunePlan,
    QueryFilter,
    checkpoint_from_row,
    checkpoint_params,
    floor_time,
    record_from_row,
    results_for,
    utc_now,
)

try:  # native/audit, built by scripts/install-deps.sh and the image; without it records are encoded in Python
    from ztmesh_audit_native import encode_records as native_encode_records
except ImportError:  # pragma: no cover - the tests require the module under CI
    native_encode_records = None  # type: ignore[assignment]

_NEWEST_RECORD = "SELECT sequence, hash, recorded_at FROM audit_records ORDER BY sequence DESC LIMIT 1"
# The newest row of each tile level: under the append lock, the edge of the tree whatever its size (a tile
# level past the tree's top finds nothing); tiles.TileEdge takes each only if the head's size implies it.
_NEWEST_TILES = (
    "SELECT t.level, t.tile, t.hashes FROM generate_series(0, 15) AS l(level) CROSS JOIN LATERAL "
    "(SELECT level, tile, hashes FROM audit_tiles WHERE level = l.level ORDER BY tile DESC, width DESC "
    "LIMIT 1) AS t"
)
# What the native walk (native/audit, ztmesh_audit_native) reads, in this order, as binary COPY: raw
# bytea and timestamps cost PostgreSQL ~2 us a row less to send than their text forms.
BINARY_VERIFY_COLUMNS = (
    "sequence, recorded_at, event_id, time, service, emitter, caller, subject, action, resource, outcome, "
    "decision_id, trace_id, prev_hash, hash, masked, details"
)
# What `_link` reads as text COPY: the same, the hashes as plain hex.
_VERIFY_COLUMNS = BINARY_VERIFY_COLUMNS.replace("prev_hash, hash", "encode(prev_hash, 'hex'), encode(hash, 'hex')")
SCHEMA_TEXT = str(SCHEMA_VERSION).encode()
_BINARY_CHUNK = 1 << 20  # bytes of the binary COPY stream handed to the native walk at a time
_COPY_ESCAPE = re.compile(rb"\\(.)")
_COPY_UNESCAPE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v", b"\\": b"\\"}


def _copy_unescape(field: bytes) -> bytes:
    return _COPY_ESCAPE.sub(lambda m: _COPY_UNESCAPE.get(m.group(1), m.group(1)), field)


def _pg_time(raw: bytes) -> bytes:
    """`2025-01-02 03:04:05.12+00` (ISO DateStyle, UTC) as the canonical `"2025-01-02T03:04:05.120000Z"`."""
    if raw[-3:] != b"+00" or len(raw) < 22:
        raise StoreError(f"unexpected timestamp text {raw[:40]!r} (session TimeZone must be UTC)")
    fraction = raw[20:-3] if raw[19:20] == b"." else b""
    return b'"' + raw[:10] + b"T" + raw[11:19] + b"." + fraction.ljust(6, b"0") + b'Z"'


def _slow_link(line: bytes) -> ChainLink:
    """Exact decoding of a COPY row whose strings need JSON escaping or hold COPY escapes (rare)."""
    fields = [_copy_unescape(f) for f in line.split(b"\t")]
    (seq, rec_at, eid, time, svc, emitter, caller, subject, action, resource, outcome, did, tid, prev, digest,
     masked, details) = fields  # fmt: skip
    body = assemble(
        quoted(action.decode()), quoted(caller.decode()), quoted(did.decode()), details, quoted(emitter.decode()),
        quoted(eid.decode()), masked, quoted(outcome.decode()), _pg_time(rec_at), quoted(resource.decode()), seq,
        quoted(svc.decode()), quoted(subject.decode()), _pg_time(time), quoted(tid.decode()),
    )  # fmt: skip
    return ChainLink(int(seq), unhexlify(prev), unhexlify(digest), body)


def _link(line: bytes) -> ChainLink:
    """A chain link from one COPY text row of _VERIFY_COLUMNS.

    Fast path: no string field needs JSON escaping, so each is its raw bytes in quotes and the record
    is one join (the same bytes `record.assemble` builds; tests pin the equivalence)."""
    prefix, masked, details = line.rsplit(b"\t", 2)
    # Validation keeps control characters out of these fields, and COPY turns \b \f \n \r \t \v into
    # backslash escapes; a raw control character left here can only be tampering, which the hash exposes.
    if b"\\" in line or b'"' in prefix:
        return _slow_link(line)
    (seq, rec_at, eid, time, svc, emitter, caller, subject, action, resource, outcome, did, tid, prev,
     digest) = prefix.split(b"\t")  # fmt: skip
    if rec_at[-3:] != b"+00" or time[-3:] != b"+00" or len(rec_at) < 22 or len(time) < 22:
        return _slow_link(line)
    rec_frac = rec_at[20:-3] if len(rec_at) > 22 else b""
    time_frac = time[20:-3] if len(time) > 22 else b""
    body = b"".join((
        b'{"action":"', action, b'","caller":"', caller, b'","decision_id":"', did, b'","details":', details,
        b',"emitter":"', emitter, b'","event_id":"', eid, b'","masked":', masked, b',"outcome":"', outcome,
        b'","recorded_at":"', rec_at[:10], b"T", rec_at[11:19], b".", rec_frac.ljust(6, b"0"),
        b'Z","resource":"', resource, b'","sequence":', seq, b',"service":"', svc, b'","subject":"', subject,
        b'","time":"', time[:10], b"T", time[11:19], b".", time_frac.ljust(6, b"0"), b'Z","trace_id":"', tid,
        b'","v":', SCHEMA_TEXT, b"}",
    ))  # fmt: skip
    return ChainLink(int(seq), unhexlify(prev), unhexlify(digest), body)


class _Encoded:
    """A batch's events encoded before the append lock, by event id: each record's `record_parts` and its
    COPY text columns event_id..masked: as Append's native pass encoded them (record.EncodedEvents), else
    natively when the module is built (native/audit/src/append.rs; ~2 us an event where these take ~5),
    in Python for what it leaves to Python."""

    __slots__ = ("parts", "columns")

    def __init__(self, events: Sequence[EventV1], emitter: str) -> None:
        self.parts: dict[str, tuple[bytes, bytes, bytes]] = {}
        self.columns: dict[str, str] = {}
        if isinstance(events, EncodedEvents) and events.emitter == emitter:  # encoded as Append accepted them
            self.parts, self.columns = dict(events.parts), dict(events.columns)
            events = [e for e in events if e.event_id not in self.parts]
        natively = [] if native_encode_records is None else native_encode_records(list(events), emitter, SCHEMA_TEXT)
        for event, encoded in itertools.zip_longest(events, natively):
            if encoded is None:
                self.parts[event.event_id], self.columns[event.event_id] = (
                    record_parts(event, emitter), _copy_columns(event, emitter)
                )  # fmt: skip
            else:
                before, middle, after, self.columns[event.event_id] = encoded
                self.parts[event.event_id] = (before, middle, after)


_COPY_TEXT_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_columns(event: EventV1, emitter: str) -> str:
    """Columns event_id..masked of RECORD_COLUMNS (they are consecutive) as a stretch of one COPY text row.
    Validation keeps tabs and line breaks out of every one of them (text fields refuse control characters,
    details and masked are canonical JSON); backslashes, which JSON escapes contain, are doubled."""
    fields = (
        event.event_id, event.time, event.service, emitter, event.caller, event.subject, event.action,
        event.resource, event.outcome, event.decision_id, event.trace_id, event.details, masked_json(event.masked),
    )  # fmt: skip
    text = "\t".join(fields)
    if text.count("\t") != len(fields) - 1 or "\n" in text or "\r" in text:
        return "\t".join(f.translate(_COPY_TEXT_ESCAPES) for f in fields)  # (an emitter in-process, unvalidated)
    return text.replace("\\", "\\\\") if "\\" in text else text


def _times(row: Sequence[Any], *positions: int) -> list[Any]:
    out = list(row)
    for i in positions:
        out[i] = canonical.format_time(out[i]) if out[i] is not None else ""
    return out


class PostgresAuditStore:
    def __init__(
        self,
        dsn: str,
        *,
        clock: Clock = utc_now,
        install: bool = True,
        pool_size: int = 4,
        partition_unit: str = "month",
        connect_timeout: float = 30.0,
        min_retention: timedelta = DEFAULT_MIN_RETENTION,
    ) -> None:
        self.dsn = dsn
        self.clock = clock
        self._partitions: set[datetime] = set()
        try:
            self.pool = ConnectionPool(
                dsn, min_size=1, max_size=pool_size, open=True, timeout=connect_timeout,
                # synchronous_commit on whatever the server's default: audit acknowledges an Append only
                # once its commit is in the WAL, or a database crash forgets records emitters then dropped.
                # autocommit: a transaction only where `conn.transaction()` asks for one (every write does),
                # so a one-statement read is one round trip, not three with BEGIN and COMMIT.
                kwargs={"options": "-c TimeZone=UTC -c DateStyle=ISO,YMD -c synchronous_commit=on", "autocommit": True},
            )  # fmt: skip
            with self.pool.connection(timeout=connect_timeout) as conn:
                version = pg_schema.check_version(conn)
                if version is None:
                    if not install:
                        raise SchemaMissing(_missing_schema_message())
                    try:
                        floor = f"{min_retention.total_seconds()} seconds"
                        pg_schema.install(conn, partition_unit=partition_unit, min_retention=floor)
                    except psycopg.errors.InsufficientPrivilege:
                        raise SchemaMissing(_missing_schema_message()) from None
                elif version != pg_schema.SCHEMA_VERSION:
                    raise SchemaMissing(
                        f"audit schema version {version} is not {pg_schema.SCHEMA_VERSION}; as the owner run "
                        "`ztmesh audit migrate --dsn <owner DSN>` to upgrade it"
                    )
                unit = conn.execute("SELECT value FROM audit_meta WHERE name = 'partition_unit'").fetchone()
                self.partition_unit = unit[0] if unit else partition_unit
        except (psycopg.Error, PoolTimeout) as exc:
            self.close()
            raise StoreError(f"audit database: {_first_line(exc)}") from None
        except BaseException:
            self.close()
            raise

    def _run(self, fn: Any, *args: Any, transaction: bool = True) -> Any:
        """Run `fn(conn, *args)` in one transaction (or, for one statement that only reads, in none); map
        driver errors to audit errors."""
        try:
            with self.pool.connection() as conn, (conn.transaction() if transaction else nullcontext()):
                return fn(conn, *args)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise AppendOnlyViolation(_first_line(exc)) from None
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"audit database: {_first_line(exc)}") from None

    # --- append -------------------------------------------------------------------------------------------

    @staticmethod
    def _head(conn: Any, newest: Any = None) -> ChainHead:
        """The chain's head: its newest record (`newest`: that row, read already), else the prune anchor."""
        row = newest if newest is not None else conn.execute(_NEWEST_RECORD).fetchone()
        if row:
            return ChainHead(row[0], bytes(row[1]), canonical.format_time(row[2]))
        anchor = conn.execute(
            "SELECT pruned_through_sequence, pruned_through_hash FROM audit_checkpoints WHERE kind = 'prune' "
            "ORDER BY pruned_through_sequence DESC LIMIT 1"
        ).fetchone()
        return ChainHead(anchor[0], bytes(anchor[1]), "") if anchor else ChainHead()

    @staticmethod
    def _stored(conn: Any, ids: list[str]) -> dict[str, tuple[int, EventV1]]:
        query = f"SELECT {RECORD_COLUMNS} FROM audit_records WHERE event_id = ANY(%s::uuid[])"
        rows = conn.execute(query, (_array(ids),)).fetchall()
        out = {}
        for row in rows:
            record = record_from_row(_times(row, 1, 3))
            out[record.event.event_id] = (record.sequence, record.event)
        return out

    @staticmethod
    def _raced(conn: Any, seen: ChainHead, ids: list[str]) -> Any:
        """Which of `ids` records after `seen` hold: the range of the primary key (and of the partitions,
        when the time is known) read first, then matched against the ids - through the event_id index
        instead, PostgreSQL probed every partition once for each of a batch's ids (~3 ms a group)."""
        where, params = "sequence > %s", [seen.sequence]
        if seen.recorded_at:
            where, params = where + " AND recorded_at >= %s", [*params, seen.recorded_at]
        return conn.execute(
            f"WITH since AS MATERIALIZED (SELECT event_id FROM audit_records WHERE {where}) "
            "SELECT event_id::text FROM since WHERE event_id = ANY(%s::uuid[])",
            [*params, _array(ids)],
        )

    def _ensure_partition(self, conn: Any, moment: datetime) -> None:
        if self.partition_unit == "timescaledb":
            return
        start = floor_time(moment, self.partition_unit)
        if start not in self._partitions:
            conn.execute("SELECT audit_ensure_partition(%s)", (moment,))
            self._partitions.add(start)

    def _extend(
        self, conn: Any, tip: AppendTip, events: Sequence[EventV1], emitter: str, encoded: _Encoded
    ) -> tuple[BatchPlan, dict[str, int], str, list[tuple[merkle.NodeId, bytes]]]:
        """One batch of a group after the tip: its plan, the sequence of each new event, its records' COPY
        text rows and the tree nodes they complete."""
        plan, extension = tip.extend_hashed(events, canonical.format_time(self.clock()), emitter, encoded.parts)
        if extension is None:
            return plan, {}, "", []
        self._ensure_partition(conn, canonical.parse_time(extension.when))
        # Under the lock, only what the position in the chain decides; the rest of each row was made before.
        first, when = extension.head.sequence + 1, extension.when
        hexes = [h.hex() for h in (extension.head.hash, *extension.hashes)]
        ids = [e.event_id for e in extension.events]
        rows = "".join([
            f"{first + i}\t{when}\t{encoded.columns[eid]}\t\\\\x{hexes[i]}\t\\\\x{hexes[i + 1]}\n"
            for i, eid in enumerate(ids)
        ])  # fmt: skip
        return plan, dict(zip(ids, range(first, first + len(ids)), strict=True)), rows, extension.nodes

    def append(self, events: Sequence[EventV1], emitter: str) -> list[AppendResult]:
        return self.append_many([(events, emitter)])[0] if events else []

    def append_many(self, batches: Sequence[tuple[Sequence[EventV1], str]]) -> list[list[AppendResult]]:
        encoded = [_Encoded(events, emitter) for events, emitter in batches]

        # One lock, one dedup lookup, one head and frontier read for the whole group (AppendTip). The lookup
        # over the whole log runs before the lock, outside its transaction (one holding table locks while it
        # waits for the append lock would deadlock with a holder creating a partition), so the other audit
        # processes append meanwhile; under the lock, only the records appended since are looked at. Each
        # statement sees every commit before it, and appends commit in sequence order, so the lookup, after
        # the head, saw every record up to `seen`.
        ids = [e.event_id for events, _ in batches for e in events]
        seen, stored = self._run(lambda conn: (self._head(conn), self._stored(conn, ids)), transaction=False)

        def write(conn: Any) -> list[tuple[BatchPlan, dict[str, int]]]:
            # Four round trips under the lock, whatever the group's size: (1) the lock, the head, the retries
            # others stored since `seen` and the tree's edge - each statement waits for the one before, so
            # all but the lock read what its holder sees; (2, 3) one COPY of every batch's records; (4) the
            # tiles they complete and the commit. The transaction is begun and committed by hand so the
            # commit can travel with the tiles (a COPY cannot run in a pipeline; everything else does).
            with conn.pipeline():
                conn.execute("BEGIN")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (pg_schema.APPEND_LOCK,))
                newest = conn.execute(_NEWEST_RECORD)
                raced = self._raced(conn, seen, ids)
                newest_tiles = conn.execute(_NEWEST_TILES)
            head = self._head(conn, newest.fetchone())
            raced_ids = [row[0] for row in raced]  # a retry another process stored meanwhile (rare)
            if raced_ids:
                stored.update(self._stored(conn, raced_ids))
            edge = tile_edge(conn, head.sequence, {(level, tile): bytes(h) for level, tile, h in newest_tiles})
            tip = AppendTip(head, stored, edge.read_nodes)
            extended = [
                self._extend(conn, tip, events, emitter, codes)
                for (events, emitter), codes in zip(batches, encoded, strict=True)
            ]
            rows = "".join(batch_rows for _, _, batch_rows, _ in extended)
            if rows:
                with conn.cursor().copy(f"COPY audit_records ({RECORD_COLUMNS}) FROM STDIN") as copy:
                    copy.write(rows.encode())
            grown = edge.extend(node for *_, nodes in extended for node in nodes) if rows else []
            with conn.pipeline():
                if grown:
                    insert_tiles(conn, grown)
                conn.execute("COMMIT")
            return [(plan, fresh) for plan, fresh, _, _ in extended]

        try:
            written = self._run(by_hand(write), transaction=False)
        except StoreError:
            self._partitions.clear()  # a partition may have been dropped or rolled back; look again next time
            raise
        return [results_for(events, *done) for (events, _), done in zip(batches, written, strict=True)]

    # --- reading ------------------------------------------------------------------------------------------

    def head(self) -> ChainHead:
        head: ChainHead = self._run(self._head)
        return head

    def read_nodes(self, ids: Sequence[merkle.NodeId]) -> list[bytes]:
        nodes: list[bytes] = self._run(_read_nodes, ids, transaction=False)  # a proof's one query
        return nodes

    def bounds(self) -> tuple[int, int]:
        row = self._run(lambda c: c.execute("SELECT min(sequence), max(sequence) FROM audit_records").fetchone())
        return (row[0] or 0, row[1] or 0)

    def hash_at(self, sequence: int) -> bytes | None:
        query = "SELECT hash FROM audit_records WHERE sequence = %s"
        row = self._run(lambda c: c.execute(query, (sequence,)).fetchone())
        return bytes(row[0]) if row else None

    def links(self, start: int, end: int) -> Iterator[ChainLink]:
        """Stream start..end through COPY, read straight from libpq: PostgreSQL sends one message per
        row, and per-row driver overhead would otherwise cost more than hashing the record."""
        for line in self._copy_out(verify_copy_query(_VERIFY_COLUMNS, start, end)):
            yield _link(bytes(line[:-1]) if line[-1:] == b"\n" else bytes(line))

    def binary_records(self, start: int, end: int, *, ordered: bool = True) -> Iterator[bytes]:
        """Records start..end as PostgreSQL's binary COPY stream of BINARY_VERIFY_COLUMNS (header, one
        tuple per record, trailer), about a megabyte at a time: what the native walk reads. Unordered,
        PostgreSQL sends them as they lie on disk (~1 us a row cheaper than an index walk): in sequence
        order unless something moved them, which the reader must notice."""
        query = verify_copy_query(BINARY_VERIFY_COLUMNS, start, end, ordered=ordered, binary=True)
        yield from self._copy_out(query, _BINARY_CHUNK)

    def _copy_out(self, query: bytes, chunk: int = 0) -> Iterator[Any]:
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield from _copy_out_messages(conn, query, chunk)
        except psycopg.Error as exc:
            raise StoreError(f"audit database: {_first_line(exc)}") from None

    def query(self, where: QueryFilter, after_sequence: int, limit: int) -> list[AuditRecord]:
        clauses, params = [], []
        for column in ("service", "subject", "action", "outcome", "decision_id", "event_id"):
            value = getattr(where, column)
            if value:
                clauses.append(f"{column} = %s")
                params.append(value)
        if where.start:
            clauses.append("time >= %s")
            params.append(where.start)
        if where.end:
            clauses.append("time < %s")
            params.append(where.end)
        if after_sequence:
            clauses.append("sequence < %s" if where.newest_first else "sequence > %s")
            params.append(after_sequence)
        text = f"SELECT {RECORD_COLUMNS} FROM audit_records"
        if clauses:
            text += " WHERE " + " AND ".join(clauses)
        text += f" ORDER BY sequence {'DESC' if where.newest_first else 'ASC'} LIMIT %s"
        rows = self._run(lambda c: c.execute(text, [*params, limit]).fetchall())
        return [record_from_row(_times(row, 1, 3)) for row in rows]

    # --- checkpoints and retention ------------------------------------------------------------------------

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        params = list(checkpoint_params(checkpoint))
        params[10] = params[10] or None  # pruned_before: NULL for head checkpoints
        self._run(lambda c: c.execute(
            f"INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS}) VALUES ({', '.join(['%s'] * 14)})", params
        ))  # fmt: skip

    def _checkpoints(self, suffix: str) -> list[Checkpoint]:
        rows = self._run(lambda c: c.execute(f"SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints {suffix}").fetchall())
        return [checkpoint_from_row(_times(row, 4, 10)) for row in rows]

    def checkpoints(self) -> list[Checkpoint]:
        return self._checkpoints("ORDER BY sequence, time")

    def latest_checkpoint(self) -> Checkpoint | None:
        found = self._checkpoints("ORDER BY sequence DESC, time DESC LIMIT 1")
        return found[0] if found else None

    def plan_prune(self, cutoff: datetime) -> PrunePlan | None:
        def plan(conn: Any) -> PrunePlan | None:
            # Never plan past the owner's floor: the drop function would refuse it after the PRUNE
            # checkpoint was signed. No floor at all plans nothing (the function refuses that too).
            floor = conn.execute(
                "SELECT now() - value::interval FROM audit_meta WHERE name = 'min_retention'"
            ).fetchone()
            if floor is None:
                return None
            cutoff_now = min(cutoff, floor[0])
            if self.partition_unit == "timescaledb":
                boundary = conn.execute(
                    "SELECT max(range_end) FROM timescaledb_information.chunks "
                    "WHERE hypertable_name = 'audit_records' AND range_end <= %s", (cutoff_now,)
                ).fetchone()[0]  # fmt: skip
            else:
                boundary = conn.execute(
                    "SELECT max(upper_bound) FROM audit_partitions WHERE upper_bound <= %s", (cutoff_now,)
                ).fetchone()[0]
            if boundary is None:
                return None
            top = conn.execute(
                "SELECT sequence, hash FROM audit_records WHERE recorded_at < %s ORDER BY sequence DESC LIMIT 1",
                (boundary,),
            ).fetchone()
            if top is None:
                return None
            first = conn.execute("SELECT min(sequence) FROM audit_records").fetchone()[0]
            return PrunePlan(boundary, top[0], bytes(top[1]), first)

        result: PrunePlan | None = self._run(plan)
        return result

    def prune(self, plan: PrunePlan) -> int:
        def drop(conn: Any) -> int:
            # Hold the append lock: no appender may read a head from a partition while it goes.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (pg_schema.APPEND_LOCK,))
            return int(conn.execute("SELECT audit_drop_partitions(%s)", (plan.cutoff,)).fetchone()[0])

        dropped: int = self._run(drop)
        self._partitions.clear()
        return dropped

    def close(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()


def tile_edge(conn: Any, size: int, newest: Mapping[tiles.TileId, bytes] | None = None) -> tiles.TileEdge:
    """An appender's edge of the tree of `size` leaves: from `newest` (the _NEWEST_TILES rows) where they are
    it, else read through `conn` when first needed."""
    return tiles.TileEdge(size, lambda wanted: _read_tiles(conn, wanted, exact=True), newest)


# Tile rows as four arrays: one statement, which unlike a COPY can share a round trip (the append's commit).
# The hashes go in binary (%b): as text their hex costs PostgreSQL more to parse than the rows cost to insert
# (45 rows of ~1 KB and the commit: 1.6 ms so, 5.4 ms as text, 3.8 ms as a text COPY and its commit).
_INSERT_TILES = (
    "INSERT INTO audit_tiles (level, tile, width, hashes) "
    "SELECT * FROM unnest(%s::smallint[], %s::bigint[], %s::smallint[], %b::bytea[])"
)


def insert_tiles(conn: Any, rows: Sequence[tiles.TileRow]) -> None:
    """Write tile rows (from `tiles.TileEdge.extend` or `tiles.tile_rows`); in a pipeline, it is sent with
    what follows."""
    conn.execute(_INSERT_TILES, (
        _array(row[0] for row in rows), _array(row[1] for row in rows), _array(row[2] for row in rows),
        [row[3] for row in rows],
    ))  # fmt: skip


def by_hand(write: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`write(conn)`, which begins and commits its own transaction, rolled back if it fails on the way."""

    def run(conn: Any) -> Any:
        try:
            return write(conn)
        except BaseException:
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                with suppress(psycopg.Error):  # a connection that broke is discarded by the pool
                    conn.rollback()
            raise

    return run


def _read_nodes(conn: Any, ids: Sequence[merkle.NodeId]) -> list[bytes]:
    return tiles.read_nodes(ids, lambda wanted: _read_tiles(conn, wanted))


def _array(values: Iterable[int | str]) -> str:
    """A PostgreSQL array literal of ints or validated UUIDs (nothing to quote): cheaper than a list the
    driver adapts item by item (0.05-0.1 ms of a 10M-leaf proof's 0.6-0.8, measured)."""
    return "{" + ",".join(map(str, values)) + "}"


def _read_tiles(conn: Any, wanted: Mapping[tiles.TileId, int], *, exact: bool = False) -> dict[tiles.TileId, bytes]:
    """One indexed query for the tiles a proof needs - the widest row of each, at least as wide as asked -
    or, for an appender's edge, the row exactly as wide as the tree's size implies."""
    keys = list(wanted)
    rows = conn.execute(  # one backward probe of the primary key per tile
        "SELECT w.level, w.tile, t.hashes FROM unnest(%s::smallint[], %s::bigint[], %s::smallint[]) "
        "AS w(level, tile, width) CROSS JOIN LATERAL (SELECT hashes FROM audit_tiles t WHERE t.level = w.level "
        f"AND t.tile = w.tile AND t.width {'=' if exact else '>='} w.width ORDER BY t.width DESC LIMIT 1) AS t",
        (_array(level for level, _ in keys), _array(tile for _, tile in keys), _array(wanted.values())),
    ).fetchall()
    return {(level, tile): bytes(hashes) for level, tile, hashes in rows}


def verify_copy_query(columns: str, start: int, end: int, *, ordered: bool = True, binary: bool = False) -> bytes:
    """COPY TO STDOUT of `columns` of records start..end, in sequence order or as the rows lie on disk."""
    return (
        f"COPY (SELECT {columns} FROM audit_records WHERE sequence BETWEEN {int(start)} AND {int(end)}"
        f"{' ORDER BY sequence' if ordered else ''}) TO STDOUT{' (FORMAT binary)' if binary else ''}"
    ).encode()


def _copy_out_messages(conn: psycopg.Connection[Any], query: bytes, chunk: int = 0) -> Iterator[Any]:
    """The CopyData payloads of a COPY ... TO STDOUT, one by one (buffers libpq owns until dropped) or,
    with `chunk`, joined into bytes objects of about that many bytes (the least Python work per row: a
    list of payloads joined later costs twice as much)."""
    pgconn = conn.pgconn
    pgconn.send_query(query)
    result = pgconn.get_result()
    if result is None or result.status != pq.ExecStatus.COPY_OUT:
        message = result.error_message.decode(errors="replace") if result else "no result"
        while pgconn.get_result() is not None:
            pass
        raise StoreError(f"audit database: reading records failed: {message.strip()}")
    get = pgconn.get_copy_data
    finished = False
    joined = bytearray()
    try:
        while True:
            size, data = get(0)
            if size < 0:
                finished = True
                break
            if not chunk:
                yield data
                continue
            joined += data
            if len(joined) >= chunk:
                yield bytes(joined)
                joined.clear()
        if joined:
            yield bytes(joined)
    finally:
        if not finished:  # the reader stopped early (first broken record): stop the server, drain the stream
            conn.cancel_safe()
            while get(0)[0] >= 0:
                pass
        final = pgconn.get_result()
        while pgconn.get_result() is not None:
            pass
    if final is not None and final.status != pq.ExecStatus.COMMAND_OK:
        raise StoreError(f"audit database: reading records failed: {final.error_message.decode(errors='replace')}")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _missing_schema_message() -> str:
    return (
        "the audit schema is not installed and this database role may not create it; as the owner run "
        "`ztmesh audit migrate --dsn <owner DSN> --grant <service role>`"
    )
