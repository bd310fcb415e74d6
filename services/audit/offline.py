"""Offline verification: the chain and every checkpoint signature straight from the database, with
nothing but a connection string and the checkpoint public key(s) — the audit service need not run.

`ztmesh audit verify --dsn postgresql://… --public-key audit-checkpoints.pem` (or a SQLite file path).
A read-only role suffices: the verifier never writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ztmesh.audit import note
from ztmesh.audit.chain import CheckpointVerifier, VerifyReport
from ztmesh.audit.errors import CheckpointError
from ztmesh.audit.parallel_verify import verify_store_parallel
from ztmesh.audit.signing import load_public_keys
from ztmesh.audit.store import AuditStore


def open_for_reading(dsn: str) -> AuditStore:
    """A store over `dsn` that installs nothing: postgresql://… or a SQLite file (path or sqlite:///path)."""
    if dsn.startswith(("postgresql://", "postgres://")) or "host=" in dsn:
        from ztmesh.audit.store_postgres import PostgresAuditStore

        return PostgresAuditStore(dsn, install=False, pool_size=1)
    from ztmesh.audit.store_sqlite import SqliteAuditStore

    return SqliteAuditStore(dsn.removeprefix("sqlite://"), read_only=True)


def verify_database(
    dsn: str,
    verifier: CheckpointVerifier,
    from_sequence: int = 0,
    to_sequence: int = 0,
    *,
    note_verifiers: Sequence[note.NoteVerifier] | None = None,
    witnessed: Sequence[tuple[str, note.TreeHead]] = (),
) -> VerifyReport:
    store = open_for_reading(dsn)
    try:
        return verify_store_parallel(
            store, verifier, from_sequence, to_sequence, note_verifiers=note_verifiers, witnessed=witnessed
        )
    finally:
        store.close()


def verify_offline(
    dsn: str,
    public_keys: Sequence[Path],
    from_sequence: int = 0,
    to_sequence: int = 0,
    *,
    checkpoints: Sequence[str] = (),
    verifier_keys: Sequence[str] = (),
) -> VerifyReport:
    """Verify from the database with the ML-DSA-65 public key(s); `checkpoints` are signed notes kept
    elsewhere (checked with those keys and any Ed25519 `verifier_keys`) that the log must still extend."""
    verifier = load_public_keys(public_keys)
    origins = {text.split("\n", 1)[0] for text in checkpoints}
    note_verifiers = [note.parse_vkey(Path(v).read_text() if Path(v).is_file() else v) for v in verifier_keys]
    for public in verifier.keys:
        note_verifiers += [note.mldsa65_verifier(origin, public.public_bytes_raw()) for origin in origins]
    witnessed = []
    for text in checkpoints:
        try:
            head = note.parse_tree_head(note.open_note(text, note_verifiers).text)
        except note.NoteError as exc:
            raise CheckpointError(f"the checkpoint you hold does not verify: {exc}") from None
        witnessed.append(("the checkpoint you hold", head))
    return verify_database(dsn, verifier, from_sequence, to_sequence, witnessed=witnessed)
