"""The PostgreSQL schema of the audit trail, installed once by the database owner (`ztmesh audit migrate`).

Records are partitioned by `recorded_at` (native range partitions, or a TimescaleDB hypertable when the
extension is installed). A trigger refuses UPDATE, DELETE and TRUNCATE for every role; the service's
role holds INSERT and SELECT only, plus EXECUTE on two SECURITY DEFINER functions: one creates the next
partition, the other drops partitions older than a floor the owner sets (`min_retention` in audit_meta,
which the service role may only read), and only those that a stored PRUNE checkpoint matching the chain
covers. No role but
the owner can change what was written, and no row the service role inserts moves the floor.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

SCHEMA_VERSION = "3"  # 2: the Merkle tree (audit_tree); 3: the tree as tiles (audit_tiles)
# The floor no retention run may go below, whatever the service role asks or inserts: the product's
# default retention (AuditSettings.audit_retention_days, 7 years). Only the owner lowers it.
DEFAULT_MIN_RETENTION = "2557 days"
INSTALL_LOCK = 0x7A746D6573686169  # serializes installers: several processes may start on an empty database
# pg_advisory_xact_lock key: every appender of this database takes it before reading the head.
APPEND_LOCK = 0x7A746D6573686175  # "ztmeshau"

_TABLES = """
CREATE TABLE audit_meta (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE audit_records (
    sequence bigint NOT NULL, recorded_at timestamptz NOT NULL, event_id uuid NOT NULL, time timestamptz NOT NULL,
    service text NOT NULL, emitter text NOT NULL, caller text NOT NULL, subject text NOT NULL,
    action text NOT NULL, resource text NOT NULL, outcome text NOT NULL, decision_id text NOT NULL,
    trace_id text NOT NULL, details text NOT NULL, masked text NOT NULL, prev_hash bytea NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (sequence, recorded_at)
) {partitioning};
CREATE INDEX audit_records_event_id ON audit_records (event_id);
CREATE INDEX audit_records_time ON audit_records (time);
CREATE INDEX audit_records_subject ON audit_records (subject, sequence);
CREATE INDEX audit_records_decision ON audit_records (decision_id) WHERE decision_id <> '';
CREATE TABLE audit_checkpoints (
    checkpoint_id uuid PRIMARY KEY, kind text NOT NULL CHECK (kind IN ('head', 'prune')),
    sequence bigint NOT NULL, head_hash bytea NOT NULL, time timestamptz NOT NULL, key_id text NOT NULL,
    key_version integer NOT NULL, algorithm text NOT NULL, pruned_through_sequence bigint NOT NULL,
    pruned_through_hash bytea NOT NULL, pruned_before timestamptz, signature bytea NOT NULL,
    tree_root bytea NOT NULL DEFAULT '', note text NOT NULL DEFAULT '');
CREATE INDEX audit_checkpoints_sequence ON audit_checkpoints (sequence, time);
CREATE TABLE audit_partitions (name text PRIMARY KEY, lower_bound timestamptz NOT NULL,
    upper_bound timestamptz NOT NULL);
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
"""

# The Merkle tree over the records as tiles of height 4 (tiles.py: a row holds the complete nodes of tree
# levels 4·level .. 4·level + 3 over `width` hashes of the first; a wider row of the same tile supersedes
# it); never pruned, so the records that retention keeps stay provable against every checkpoint.
_TILES = """
CREATE TABLE audit_tiles (level smallint NOT NULL, tile bigint NOT NULL, width smallint NOT NULL,
    hashes bytea NOT NULL CHECK (width BETWEEN 1 AND 16
                                 AND length(hashes) = 32 * (width + width / 2 + width / 4 + width / 8)),
    PRIMARY KEY (level, tile, width));
CREATE TRIGGER audit_tiles_append_only BEFORE UPDATE OR DELETE ON audit_tiles
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_tiles_no_truncate BEFORE TRUNCATE ON audit_tiles
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
"""

# Times are computed in UTC whatever the session's TimeZone, so partition bounds never shift.
_FUNCTIONS = """
CREATE FUNCTION audit_ensure_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $$
DECLARE
    unit text := (SELECT value FROM audit_meta WHERE name = 'partition_unit');
    lo timestamptz;
    hi timestamptz;
    part text;
BEGIN
    IF unit = 'timescaledb' THEN
        RETURN NULL;  -- the hypertable makes its own chunks
    END IF;
    lo := date_trunc(unit, at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    hi := (date_trunc(unit, at AT TIME ZONE 'UTC') + ('1 ' || unit)::interval) AT TIME ZONE 'UTC';
    part := 'audit_records_' || to_char(lo AT TIME ZONE 'UTC', CASE unit WHEN 'day' THEN 'YYYYMMDD' ELSE 'YYYYMM' END);
    IF EXISTS (SELECT 1 FROM audit_partitions WHERE name = part) THEN
        RETURN part;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF audit_records FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    EXECUTE format('CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON %I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()', part);
    INSERT INTO audit_partitions VALUES (part, lo, hi);
    RETURN part;
END $$;
"""

# CREATE OR REPLACE (keeping its owner and grants), so `ztmesh audit migrate` brings an existing database
# to this version. A prune row counts only if it matches the stored chain: the record it prunes through
# and the head it names, hash for hash. The database cannot check its ML-DSA signature (verify does); this
# stops a row invented blind from covering records, though not one copied from hashes the role can read.
_DROP_PARTITIONS = """
CREATE OR REPLACE FUNCTION audit_drop_partitions(cutoff timestamptz) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $$
DECLARE
    unit text := (SELECT value FROM audit_meta WHERE name = 'partition_unit');
    floor interval := (SELECT value::interval FROM audit_meta WHERE name = 'min_retention');
    covered bigint := (
        SELECT max(c.pruned_through_sequence) FROM audit_checkpoints c
        WHERE c.kind = 'prune'
          AND EXISTS (SELECT 1 FROM audit_records r
                      WHERE r.sequence = c.pruned_through_sequence AND r.hash = c.pruned_through_hash)
          AND EXISTS (SELECT 1 FROM audit_records r WHERE r.sequence = c.sequence AND r.hash = c.head_hash));
    part record;
    top bigint;
    n bigint;
    dropped bigint := 0;
BEGIN
    IF floor IS NULL THEN  -- fail closed: a database without a floor drops nothing
        RAISE EXCEPTION 'audit_meta holds no min_retention (the owner sets it: ztmesh audit migrate --min-retention)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF cutoff IS NULL OR cutoff > now() - floor THEN
        RAISE EXCEPTION 'retention cutoff % is within the minimum retention (%) the database owner set', cutoff, floor
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF unit = 'timescaledb' THEN
        SELECT max(sequence), count(*) INTO top, n FROM audit_records WHERE recorded_at < cutoff;
        IF top IS NOT NULL AND (covered IS NULL OR top > covered) THEN
            RAISE EXCEPTION 'records up to % are older than % but no prune checkpoint covers them', top, cutoff
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        PERFORM drop_chunks('audit_records', older_than => cutoff);
        RETURN n;
    END IF;
    FOR part IN SELECT name FROM audit_partitions WHERE upper_bound <= cutoff ORDER BY lower_bound LOOP
        EXECUTE format('SELECT max(sequence), count(*) FROM %I', part.name) INTO top, n;
        IF top IS NOT NULL AND (covered IS NULL OR top > covered) THEN
            RAISE EXCEPTION 'partition % holds records up to % but no prune checkpoint covers them', part.name, top
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        EXECUTE format('ALTER TABLE audit_records DETACH PARTITION %I', part.name);
        EXECUTE format('DROP TABLE %I', part.name);
        DELETE FROM audit_partitions WHERE name = part.name;
        dropped := dropped + n;
    END LOOP;
    RETURN dropped;
END $$;
"""


def schema_present(conn: Any) -> bool:
    # A plain catalog query, not to_regclass(): the latter answers from the backend's relation cache, which
    # can still say "absent" right after another installer committed (found by starting two processes).
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = 'audit_meta' AND n.nspname = current_schema())"
    ).fetchone()[0]


def timescaledb_available(conn: Any) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')").fetchone()[0]


def install(
    conn: Any,
    *,
    service_role: str | None = None,
    partition_unit: str = "month",
    min_retention: str = DEFAULT_MIN_RETENTION,
) -> None:
    """Create the schema in the connection's current schema (one transaction), unless another process
    just did. Run as the owner."""
    if partition_unit not in ("month", "day"):
        raise ValueError(f"partition unit must be month or day, got {partition_unit!r}")
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    hyper = timescaledb_available(conn)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (INSTALL_LOCK,))
        min_retention = _interval(conn, min_retention)
        if schema_present(conn):
            if service_role:
                grant_service_role(conn, service_role)
            return
        conn.execute(_TABLES.format(partitioning="" if hyper else "PARTITION BY RANGE (recorded_at)") + _TILES)
        if hyper:
            conn.execute(
                "SELECT create_hypertable('audit_records', 'recorded_at', chunk_time_interval => %s::interval)",
                (f"1 {partition_unit}",),
            )
        conn.execute(_FUNCTIONS.replace("{schema}", sql.Identifier(schema).as_string(conn)))
        refresh_functions(conn)
        conn.execute(
            "INSERT INTO audit_meta VALUES ('schema_version', %s), ('partition_unit', %s), ('min_retention', %s)",
            (SCHEMA_VERSION, "timescaledb" if hyper else partition_unit, min_retention),
        )
        conn.execute(
            "REVOKE ALL ON audit_meta, audit_records, audit_checkpoints, audit_partitions, audit_tiles FROM PUBLIC"
        )
        conn.execute("REVOKE ALL ON FUNCTION audit_ensure_partition(timestamptz), "
                     "audit_drop_partitions(timestamptz) FROM PUBLIC")  # fmt: skip
        if service_role:
            grant_service_role(conn, service_role)


def refresh_functions(conn: Any) -> None:
    """(Re)create the functions whose body changed since a database was installed; idempotent. As the owner."""
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    conn.execute(_DROP_PARTITIONS.replace("{schema}", sql.Identifier(schema).as_string(conn)))


def _interval(conn: Any, value: str) -> str:
    """`value` as PostgreSQL's own interval text; a negative or unreadable one is a ValueError."""
    try:
        with conn.transaction():
            text, negative = conn.execute(
                "SELECT %s::interval::text, %s::interval < interval '0'", (value, value)
            ).fetchone()
    except psycopg.errors.DataError:
        raise ValueError(f"min retention {value!r} is not a PostgreSQL interval (e.g. '2557 days')") from None
    if negative:
        raise ValueError(f"min retention {value!r} is negative")
    return str(text)


def set_min_retention(conn: Any, value: str) -> str:
    """Set the retention floor (as the owner: the service role may only read audit_meta); returns it."""
    text = _interval(conn, value)
    conn.execute(
        "INSERT INTO audit_meta VALUES ('min_retention', %s) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (text,),
    )
    return text


def min_retention(conn: Any) -> str | None:
    row = conn.execute("SELECT value FROM audit_meta WHERE name = 'min_retention'").fetchone()
    return row[0] if row else None


def grant_service_role(conn: Any, role: str) -> None:
    """INSERT and SELECT on the trail, nothing else: the role can add records, never change them."""
    ident = sql.Identifier(role)
    schema = sql.Identifier(conn.execute("SELECT current_schema()").fetchone()[0])
    for stmt in (
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT, INSERT ON audit_records, audit_checkpoints, audit_tiles TO {role}",
        "GRANT SELECT ON audit_meta, audit_partitions TO {role}",
        "GRANT EXECUTE ON FUNCTION audit_ensure_partition(timestamptz), audit_drop_partitions(timestamptz) TO {role}",
    ):
        conn.execute(sql.SQL(stmt).format(schema=schema, role=ident))


def check_version(conn: Any) -> str | None:
    """The installed schema version, or None when the tables are missing."""
    if not schema_present(conn):
        return None
    row = conn.execute("SELECT value FROM audit_meta WHERE name = 'schema_version'").fetchone()
    return row[0] if row else None


def upgrade(conn: Any, version: str) -> bool:
    """Bring a schema installed at an older version to SCHEMA_VERSION, in one transaction, as the owner and
    holding the append lock (an appender of the old version fails after it, never writes half of each);
    False when there was nothing to do. Version 2 kept one row per tree node (`audit_tree`): its nodes
    become tiles, the roles that could write it may write those, and the node table goes."""
    if version == SCHEMA_VERSION:
        return False
    if version != "2":
        raise ValueError(f"audit schema version {version} cannot be upgraded to {SCHEMA_VERSION}")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
        if check_version(conn) == SCHEMA_VERSION:  # another migrator just did
            return False
        writers = [row[0] for row in conn.execute(
            "SELECT DISTINCT grantee FROM information_schema.role_table_grants WHERE table_name = 'audit_tree' "
            "AND table_schema = current_schema() AND privilege_type = 'INSERT' AND grantee <> current_user"
        )]  # fmt: skip
        # Each node's tile, its level in the tile (rise) and its place there (tiles._place).
        placed = (
            "WITH n AS (SELECT level / 4 AS tl, idx >> (4 - level % 4) AS tile, level % 4 AS rise, "
            "idx & ((16 >> (level % 4)) - 1) AS place, hash FROM audit_tree)"
        )
        gap = conn.execute(
            f"{placed}, w AS (SELECT tl, tile, count(*) FILTER (WHERE rise = 0) AS width FROM n GROUP BY tl, tile) "
            "SELECT tl, tile FROM n JOIN w USING (tl, tile) GROUP BY tl, tile, rise, width "
            "HAVING count(*) <> max(place) + 1 OR count(*) <> width >> rise LIMIT 1"
        ).fetchone()
        if gap:  # a tile from it would put the hashes after the hole in the wrong places
            raise ValueError(f"audit_tree has a hole in tile {tuple(gap)}: verify the log before migrating")
        conn.execute(_TILES)
        conn.execute(
            f"INSERT INTO audit_tiles (level, tile, width, hashes) {placed} SELECT tl, tile, count(*) FILTER "
            "(WHERE rise = 0), string_agg(hash, ''::bytea ORDER BY rise, place) FROM n GROUP BY tl, tile"
        )
        conn.execute("DROP TABLE audit_tree")
        conn.execute("REVOKE ALL ON audit_tiles FROM PUBLIC")
        for role in writers:
            conn.execute(sql.SQL("GRANT SELECT, INSERT ON audit_tiles TO {}").format(sql.Identifier(role)))
        conn.execute("UPDATE audit_meta SET value = %s WHERE name = 'schema_version'", (SCHEMA_VERSION,))
    return True
