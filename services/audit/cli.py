"""`ztmesh audit …`: query and verify the trail, install its PostgreSQL schema, export the checkpoint key.

`ztmesh audit verify` asks the audit service; with `--dsn` it verifies offline, straight from the
database, with the checkpoint public key(s) given by `--public-key` — no audit service needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

_ORDER = {"newest": 1, "oldest": 2}


def _stub() -> Any:
    from ztmesh._proto.audit.v1 import audit_pb2_grpc
    from ztmesh.mesh.peers import operator_channel

    return audit_pb2_grpc.AuditServiceStub(operator_channel("audit"))


def _time(text: str) -> Any:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(text.replace("Z", "+00:00")))
    return stamp


def _query(args: argparse.Namespace) -> int:
    import grpc

    from ztmesh._proto.audit.v1 import audit_pb2

    request = audit_pb2.QueryRequest(
        service=args.service, subject=args.subject, action=args.action, outcome=args.outcome,
        decision_id=args.decision, order=_ORDER[args.order], page_size=min(args.limit, 1000),
    )  # fmt: skip
    if args.since:
        request.start_time.CopyFrom(_time(args.since))
    if args.until:
        request.end_time.CopyFrom(_time(args.until))
    printed = 0
    try:
        stub = _stub()
        while printed < args.limit:
            token = ""
            for reply in stub.Query(request, timeout=30):
                for record in reply.records:
                    if printed < args.limit:
                        print(json.dumps(MessageToDict(record, preserving_proto_field_name=True)))
                        printed += 1
                token = reply.next_page_token or token
            if not token:
                break
            request.page_token = token
    except grpc.RpcError as err:
        print(f"ztmesh audit query: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ztmesh.audit.errors import AuditError

    if args.dsn:
        from ztmesh.audit.offline import verify_offline

        if not args.public_key:
            print("ztmesh audit verify: --dsn needs --public-key (the checkpoint public key, PEM)", file=sys.stderr)
            return 2
        try:
            report = verify_offline(args.dsn, args.public_key, args.from_sequence, args.to_sequence)
        except AuditError as exc:
            print(f"ztmesh audit verify: {exc}", file=sys.stderr)
            return 2
        print(report)
        return 0 if report.ok else 1
    import grpc

    from ztmesh._proto.audit.v1 import audit_pb2

    try:
        reply = _stub().Verify(
            audit_pb2.VerifyRequest(from_sequence=args.from_sequence, to_sequence=args.to_sequence), timeout=3600
        )
    except grpc.RpcError as err:
        print(f"ztmesh audit verify: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    if reply.ok:
        print(f"chain intact: {reply.records_checked} records, {reply.checkpoints_checked} checkpoints verified")
        return 0
    reason = audit_pb2.VerifyProblem.Name(reply.reason).removeprefix("VERIFY_PROBLEM_").lower()
    print(f"chain BROKEN at sequence {reply.first_bad_sequence} ({reason}): {reply.problem}")
    return 1


def _migrate(args: argparse.Namespace) -> int:
    import psycopg

    from ztmesh.audit import pg_schema

    try:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            version = pg_schema.check_version(conn)
            if version is None:
                pg_schema.install(conn, service_role=args.grant, partition_unit=args.partition,
                                  min_retention=args.min_retention or pg_schema.DEFAULT_MIN_RETENTION)  # fmt: skip
                print(f"installed the audit schema (version {pg_schema.SCHEMA_VERSION})")
            else:
                print(f"audit schema version {version} already installed")
                if args.grant:
                    pg_schema.grant_service_role(conn, args.grant)
                if args.min_retention:
                    pg_schema.set_min_retention(conn, args.min_retention)
            print(f"no retention run may drop records younger than {pg_schema.min_retention(conn)}")
            if args.grant:
                print(f"role {args.grant} may INSERT and SELECT the trail, nothing else")
    except (psycopg.Error, ValueError) as exc:
        print(f"ztmesh audit migrate: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def _public_key(args: argparse.Namespace) -> int:
    from ztmesh.audit.app import public_key_path
    from ztmesh.audit.settings import AuditSettings
    from ztmesh.mesh.launch import load_mesh_settings
    from ztmesh.mesh.settings import load_settings

    settings = load_mesh_settings()
    audit = load_settings(AuditSettings, section="audit")
    key_file = audit.audit_local_key_file or settings.data_dir / "audit" / "checkpoint-signing.key"
    if audit.audit_signer == "local":
        path = public_key_path(key_file)
        if not path.exists():
            print(f"ztmesh audit public-key: {path} does not exist (start the audit service once)", file=sys.stderr)
            return 1
        pem = path.read_bytes()
    else:
        import grpc
        from cryptography.hazmat.primitives import serialization

        from ztmesh.audit.keysign import KeyServiceSigner
        from ztmesh.mesh.peers import operator_channel

        signer = KeyServiceSigner(operator_channel("keys"), audit.audit_signing_key)
        pems, version = [], 1
        try:
            while (key := signer.public_key(version)) is not None:
                spki = serialization.PublicFormat.SubjectPublicKeyInfo
                pems.append(key.public_bytes(serialization.Encoding.PEM, spki))
                version += 1
        except grpc.RpcError as err:
            print(f"ztmesh audit public-key: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        pem = b"".join(pems)
    if args.out:
        Path(args.out).write_bytes(pem)
    else:
        sys.stdout.buffer.write(pem)
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = commands.add_parser("audit", help="the tamper-evident audit trail")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")

    query = actions.add_parser("query", help="print records as JSON lines (operator certificate)")
    for name in ("service", "subject", "action", "outcome"):
        query.add_argument(f"--{name}", default="", help=f"only records with this {name}")
    query.add_argument("--decision", default="", help="only the record of this decision id (x-ztmesh-decision-id)")
    query.add_argument("--since", help="event time from (ISO 8601, inclusive)")
    query.add_argument("--until", help="event time until (ISO 8601, exclusive)")
    query.add_argument("--order", choices=list(_ORDER), default="newest")
    query.add_argument("--limit", type=int, default=100)
    query.set_defaults(func=_query)

    verify = actions.add_parser("verify", help="recompute the hash chain and check every checkpoint signature")
    verify.add_argument("--dsn", help="verify offline from this database (postgresql://… or a SQLite file)")
    verify.add_argument("--public-key", type=Path, action="append", default=[],
                        help="checkpoint public key (PEM); repeat for rotated keys")  # fmt: skip
    verify.add_argument("--from", dest="from_sequence", type=int, default=0, help="first sequence (default: first)")
    verify.add_argument("--to", dest="to_sequence", type=int, default=0, help="last sequence (default: head)")
    verify.set_defaults(func=_verify)

    migrate = actions.add_parser("migrate", help="install the PostgreSQL schema (as the database owner)")
    migrate.add_argument("--dsn", required=True, help="owner connection string")
    migrate.add_argument("--grant", help="the audit service's role: gets INSERT and SELECT only")
    migrate.add_argument("--partition", choices=["month", "day"], default="month")
    migrate.add_argument("--min-retention",
                         help="no retention run may drop records younger than this (PostgreSQL interval, "
                              "default 2557 days; on an installed schema: changes it)")  # fmt: skip
    migrate.set_defaults(func=_migrate)

    public = actions.add_parser("public-key", help="write the checkpoint public key(s) as PEM")
    public.add_argument("--out", help="file to write (default stdout)")
    public.set_defaults(func=_public_key)
