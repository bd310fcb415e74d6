"""Audit trail: sustained ingest through Append over mTLS into local PostgreSQL with the hash chain and
signed checkpoints on, printed beside a raw COPY of the same rows into the same table (the ceiling) and
the same work in-process; and verification throughput.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.servers import start_postgres  # noqa: E402
from ztmesh.audit.chain import ChainLink, verify_links  # noqa: E402
from ztmesh.audit.record import EventV1, make_event  # noqa: E402
from ztmesh.audit.signing import LocalMlDsaSigner  # noqa: E402
from ztmesh.audit.store import RECORD_COLUMNS, record_params  # noqa: E402
from ztmesh.audit.store_postgres import PostgresAuditStore  # noqa: E402
from ztmesh.audit.store_sqlite import SqliteAuditStore  # noqa: E402
from ztmesh.audit.trail import AuditTrail, TrailSettings, verify_store  # noqa: E402
from ztmesh.mesh.auditing import uuid7  # noqa: E402

N = 50_000
BATCH = 500
POLICY = "spiffe://ztmesh.local/ns/ztmesh/sa/policy"


def raw_event(i: int) -> dict:
    return {
        "event_id": uuid7(), "time": datetime.now(UTC), "service": "policy", "action": "decide",
        "outcome": "ALLOW", "caller": "spiffe://ztmesh.local/ns/ztmesh/sa/envoy", "subject": f"user-{i % 97}",
        "resource": f"patient/{i}", "decision_id": uuid7(),
        "details": {"score": 78.5, "classification": "patient_data", "client_ip": "10.1.2.3",
                    "factors": {"identity": 0.9, "device": 0.8, "network": 0.7, "behaviour": 0.95, "context": 0.6},
                    "obligations": ["log_all_access", "encrypt_transmission"], "revision": "r42"},
    }  # fmt: skip


def append_requests(count: int) -> list:
    """Ready-made Append requests of BATCH fresh events each (ids must be new, or audit skips them)."""
    from google.protobuf import timestamp_pb2

    from ztmesh._proto.audit.v1 import audit_pb2

    details = json.dumps(raw_event(0)["details"])
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    requests = []
    for n in range(count):
        events = [
            audit_pb2.AuditEvent(
                event_id=uuid7(), time=stamp, service="policy", action="decide", outcome="ALLOW",
                caller_spiffe_id="spiffe://ztmesh.local/ns/ztmesh/sa/envoy", subject=f"user-{i % 97}",
                resource=f"patient/{n}-{i}", decision_id=uuid7(), details_json=details,
            )
            for i in range(BATCH)
        ]  # fmt: skip
        requests.append(audit_pb2.AppendRequest(events=events))
    return requests


def grpc_ingest(dsn: str, seconds: float = 5.0) -> float:
    """Events/s through Append over mTLS at 4 calls in flight, 2 server processes sharing the port."""
    from bench.harness import dev_pki, free_port, measure_grpc, server_process
    from ztmesh._proto.audit.v1 import audit_pb2_grpc
    from ztmesh.mesh.tls import TlsFiles

    requests = iter(append_requests(600))

    def make_call(channel):  # type: ignore[no-untyped-def]
        stub = audit_pb2_grpc.AuditServiceStub(channel)

        async def call() -> None:
            await stub.Append(next(requests), timeout=30)

        return call

    with dev_pki() as certs, tempfile.TemporaryDirectory() as work:
        port = free_port()
        files = TlsFiles(certs / "policy.crt", certs / "policy.key", certs / "ca.crt")
        env = {"ZTMESH_DATABASE_URL": dsn, "ZTMESH_DATA_DIR": work, "ZTMESH_PROCESSES": "2"}
        with server_process(["ztmesh.cli", "serve", "audit"], certs, port, **env):
            result = measure_grpc("Append", f"localhost:{port}", files, make_call, 4, seconds)
    return result.ops * BATCH


def row(name: str, rate: float, ceiling: float | None = None) -> str:
    ratio = f"{rate / ceiling:6.2f}x" if ceiling else "       "
    return f"{name:<62} {rate:>10.0f} records/s {ratio}"


def main() -> None:
    print("== audit: ingest with chain + ML-DSA-65 checkpoints vs raw COPY; verification ==")
    signer = LocalMlDsaSigner.generate()
    raws = [raw_event(i) for i in range(N)]
    pg = start_postgres()
    try:
        grpc_dsn = pg.new_database("bench_grpc")
        try:
            over_grpc: float | None = grpc_ingest(grpc_dsn)
        except (ImportError, AttributeError) as exc:  # stubs older than proto/ (run `make proto`)
            print(f"gRPC ingest skipped: {exc}")
            over_grpc = None
        store = PostgresAuditStore(pg.new_database("bench_audit"))
        trail = AuditTrail(store, signer, signer, TrailSettings(checkpoint_every=1000))
        start = time.perf_counter()
        for i in range(0, N, BATCH):
            trail.append([make_event(**r) for r in raws[i : i + BATCH]], POLICY)
        ingest = N / (time.perf_counter() - start)

        ceiling_store = PostgresAuditStore(pg.new_database("bench_ceiling"))
        records = store.query(__import__("ztmesh.audit.store", fromlist=["QueryFilter"]).QueryFilter(
            newest_first=False), 0, N)  # fmt: skip
        rows = [record_params(r) for r in records]
        ceiling_store.append([records[0].event], POLICY)  # creates the partition, as the service would
        with ceiling_store.pool.connection() as conn, conn.cursor() as cur:
            start = time.perf_counter()
            for i in range(0, N, BATCH):
                with cur.copy(f"COPY audit_records ({RECORD_COLUMNS}) FROM STDIN") as copy:
                    for values in rows[i : i + BATCH]:
                        copy.write_row((values[0] + N, *values[1:]))
                conn.commit()
            copy_rate = N / (time.perf_counter() - start)

        start = time.perf_counter()
        report = trail.verify()
        verify_pg = report.records_checked / (time.perf_counter() - start)
        assert report.ok, report
        if over_grpc is not None:
            grpc_store = PostgresAuditStore(grpc_dsn, install=False)
            grpc_report = verify_store(grpc_store, None)
            assert grpc_report.ok, grpc_report  # the gRPC run left an intact chain
            grpc_store.close()

        links = [ChainLink(r.sequence, r.prev_hash, r.hash, r.canonical()) for r in records]
        start = time.perf_counter()
        assert verify_links(links).ok
        verify_core = N / (time.perf_counter() - start)

        prebuilt: list[EventV1] = [make_event(**r) for r in raws[:10_000]]
        start = time.perf_counter()
        for _ in range(3):
            [make_event(**r) for r in raws[:10_000]]
        validate = 30_000 / (time.perf_counter() - start)
        store.close()
        ceiling_store.close()
    finally:
        pg.stop()
    with tempfile.TemporaryDirectory() as tmp:
        lite = SqliteAuditStore(Path(tmp) / "a.db")
        lite_trail = AuditTrail(lite, signer, signer, TrailSettings(checkpoint_every=1000))
        start = time.perf_counter()
        for i in range(0, len(prebuilt), BATCH):
            lite_trail.append(prebuilt[i : i + BATCH], POLICY)
        lite_ingest = len(prebuilt) / (time.perf_counter() - start)
        start = time.perf_counter()
        assert lite_trail.verify().ok
        lite_verify = len(prebuilt) / (time.perf_counter() - start)
        lite.close()

    print(row("raw COPY of the same rows into audit_records (ceiling)", copy_rate))
    if over_grpc is not None:
        print(row("Append over mTLS, 500/batch, 4 in flight, 2 server processes", over_grpc, copy_rate),
              "(target >= 0.40x)")  # fmt: skip
    print(row("Append path in-process, 1 thread: validate+sanitize+chain+COPY", ingest, copy_rate))
    print(row("  of which validation + sanitization alone", validate))
    print(row("verify from PostgreSQL (COPY stream, hash, checkpoint signatures)", verify_pg), "(target 200000)")
    print(row("verify core over records in memory (canonical bytes + SHA-256 chain)", verify_core))
    print(row("SQLite embedded default: append (prebuilt events)", lite_ingest))
    print(row("SQLite embedded default: verify", lite_verify))


if __name__ == "__main__":
    main()
