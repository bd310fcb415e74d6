"""`ztmesh audit …`: query and verify the trail, prove records and consistency, install its PostgreSQL
schema, export the checkpoint keys.

`ztmesh audit verify` asks the audit service; with `--dsn` it verifies offline, straight from the
database, with the checkpoint public key(s) given by `--public-key` — no audit service needed. With
`--checkpoint FILE` (a signed note kept elsewhere) either way also proves the database still extends it.
Proof documents (`prove`, `consistency`) are the JSON of docs/audit-record.md ("Proofs").
"""

from __future__ import annotations

import argparse
import base64
import json
import os
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


def _read_checkpoints(args: argparse.Namespace) -> list[str]:
    notes = [path.read_text() for path in args.checkpoint]
    if args.witness_dir or os.environ.get("ZTMESH_AUDIT_WITNESS_DIR"):
        latest = Path(args.witness_dir or os.environ["ZTMESH_AUDIT_WITNESS_DIR"]) / "latest"
        if latest.exists():
            notes.append(latest.read_text())
    return notes


def _verify(args: argparse.Namespace) -> int:
    from ztmesh.audit.errors import AuditError

    try:
        held = _read_checkpoints(args)
    except OSError as exc:
        print(f"ztmesh audit verify: cannot read a checkpoint: {exc}", file=sys.stderr)
        return 2
    if args.dsn:
        from ztmesh.audit.offline import verify_offline

        if not args.public_key:
            print("ztmesh audit verify: --dsn needs --public-key (the checkpoint public key, PEM)", file=sys.stderr)
            return 2
        try:
            report = verify_offline(
                args.dsn, args.public_key, args.from_sequence, args.to_sequence,
                checkpoints=held, verifier_keys=args.verifier_key,
            )  # fmt: skip
        except AuditError as exc:
            print(f"ztmesh audit verify: {exc}", file=sys.stderr)
            return 2
        print(report)
        return 0 if report.ok else 1
    import grpc

    from ztmesh._proto.audit.v1 import audit_pb2

    try:
        reply = _stub().Verify(
            audit_pb2.VerifyRequest(
                from_sequence=args.from_sequence, to_sequence=args.to_sequence, witnessed_checkpoints=held
            ),
            timeout=3600,
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


def _fail(command: str, err: Any) -> int:
    print(f"ztmesh audit {command}: {err.code().name}: {err.details()}", file=sys.stderr)
    return 1


def _checkpoint(args: argparse.Namespace) -> int:
    import grpc

    from ztmesh._proto.audit.v1 import audit_pb2

    try:
        cp = _stub().GetCheckpoint(audit_pb2.GetCheckpointRequest(tree_size=args.size), timeout=30)
    except grpc.RpcError as err:
        return _fail("checkpoint", err)
    if not cp.note:
        print("ztmesh audit checkpoint: this checkpoint predates signed notes", file=sys.stderr)
        return 1
    if args.json:
        from ztmesh.audit import note

        head = note.parse_tree_head(cp.note.split("\n\n")[0] + "\n")
        print(json.dumps({
            "origin": head.origin, "tree_size": head.size, "root_hash": base64.b64encode(head.root).decode(),
            "checkpoint_id": cp.checkpoint_id, "note": cp.note,
        }, indent=2))  # fmt: skip
    else:
        sys.stdout.write(cp.note)
    return 0


def _note_verifiers(args: argparse.Namespace, origin: str) -> list[Any]:
    from ztmesh.audit import note
    from ztmesh.audit.signing import load_public_key

    verifiers = [note.parse_vkey(_key_text(v)) for v in args.verifier_key]
    for path in args.public_key:
        public = load_public_key(path.read_bytes(), str(path)).public_bytes_raw()
        verifiers.append(note.mldsa65_verifier(origin, public))
    return verifiers


def _key_text(value: str) -> str:
    """A verifier key given inline or as a file holding it."""
    return Path(value).read_text().strip() if Path(value).is_file() else value


def _prove(args: argparse.Namespace) -> int:
    import grpc

    from ztmesh._proto.audit.v1 import audit_pb2
    from ztmesh.audit import note, proofs

    request = audit_pb2.ProveInclusionRequest(tree_size=args.size)
    if args.decision:
        request.decision_id = args.decision
    else:
        request.event_id = args.event
    try:
        reply = _stub().ProveInclusion(request, timeout=30)
    except grpc.RpcError as err:
        return _fail("prove", err)
    proof = proofs.InclusionProof(reply.checkpoint, reply.sequence, reply.record, tuple(reply.proof))
    print(proofs.dumps(proof.to_json()))
    if args.verifier_key or args.public_key:
        origin = reply.checkpoint.split("\n", 1)[0]
        try:
            head = proof.verify(_note_verifiers(args, origin))
        except (note.NoteError, proofs.ProofDocumentError) as exc:
            print(f"ztmesh audit prove: the proof does NOT verify: {exc}", file=sys.stderr)
            return 1
        print(f"verified: record {reply.sequence} is in the signed tree of {head.size} records", file=sys.stderr)
    return 0


def _consistency(args: argparse.Namespace) -> int:
    import grpc

    from ztmesh._proto.audit.v1 import audit_pb2
    from ztmesh.audit import proofs

    try:
        reply = _stub().ProveConsistency(
            audit_pb2.ProveConsistencyRequest(old_size=args.old, new_size=args.new), timeout=30
        )
    except grpc.RpcError as err:
        return _fail("consistency", err)
    proof = proofs.ConsistencyProof(reply.origin, reply.old_size, reply.old_root, reply.new_size, reply.new_root,
                                    tuple(reply.proof))  # fmt: skip
    print(proofs.dumps(proof.to_json()))
    if not proof.holds():
        print("ztmesh audit consistency: the proof does NOT hold", file=sys.stderr)
        return 1
    return 0


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
                if pg_schema.upgrade(conn, version):
                    print(f"upgraded the audit schema from version {version} to {pg_schema.SCHEMA_VERSION}")
                else:
                    print(f"audit schema version {version} already installed")
                pg_schema.refresh_functions(conn)  # function bodies fixed since install (CREATE OR REPLACE)
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
    verify.add_argument("--checkpoint", type=Path, action="append", default=[],
                        help="a signed checkpoint note kept elsewhere: the database must still extend it")  # fmt: skip
    verify.add_argument("--witness-dir", help="also check against the latest checkpoint there "
                        "(default: $ZTMESH_AUDIT_WITNESS_DIR)")  # fmt: skip
    verify.add_argument("--verifier-key", action="append", default=[],
                        help="Ed25519 note verifier key (name+hash+key, or a file with it) for --dsn")  # fmt: skip
    verify.set_defaults(func=_verify)

    checkpoint = actions.add_parser("checkpoint", help="print the newest signed checkpoint (a C2SP signed note)")
    checkpoint.add_argument("--size", type=int, default=0, help="the checkpoint of this tree size")
    checkpoint.add_argument("--json", action="store_true", help="origin, size, root hash and note as JSON")
    checkpoint.set_defaults(func=_checkpoint)

    prove = actions.add_parser("prove", help="inclusion proof of one record in a signed tree (JSON)")
    which = prove.add_mutually_exclusive_group(required=True)
    which.add_argument("--decision", help="the record of this decision id")
    which.add_argument("--event", help="the record of this event id")
    prove.add_argument("--size", type=int, default=0, help="against the checkpoint of this size (default newest)")
    for parser in (prove,):
        parser.add_argument("--verifier-key", action="append", default=[],
                            help="check the proof here with this Ed25519 note verifier key (or file)")  # fmt: skip
        parser.add_argument("--public-key", type=Path, action="append", default=[],
                            help="…or with the ML-DSA-65 checkpoint public key (PEM)")  # fmt: skip
    prove.set_defaults(func=_prove)

    consistency = actions.add_parser("consistency", help="proof that tree size NEW extends tree size OLD (JSON)")
    consistency.add_argument("old", type=int)
    consistency.add_argument("new", type=int, nargs="?", default=0, help="default: the newest checkpoint")
    consistency.set_defaults(func=_consistency)

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
