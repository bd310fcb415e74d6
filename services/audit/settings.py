"""Settings of the audit service and of the audit client in emitting services (environment
`ZTMESH_AUDIT_*`, YAML section `audit:`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ztmesh.mesh.settings import one_of, positive, setting


@dataclass(frozen=True)
class AuditSettings:
    audit_checkpoint_every: int = setting(1000, doc="sign a checkpoint after this many new records", check=positive)
    audit_checkpoint_interval: float = setting(
        60.0, doc="…or after this many seconds when records arrived since the last one", check=positive
    )
    audit_retention_days: int = setting(
        2557, doc="records older than this are pruned by whole partitions (default 7 years)", check=positive
    )
    audit_retention_check: float = setting(3600.0, doc="seconds between retention runs", check=positive)
    audit_partition: str = setting(
        "month", doc="time partition size for new PostgreSQL schemas and retention", check=one_of("month", "day")
    )
    audit_max_batch: int = setting(1000, doc="events accepted per Append call", check=positive)
    audit_max_details_bytes: int = setting(65536, doc="largest details object (canonical JSON bytes)", check=positive)
    audit_signer: str = setting(
        "local",
        doc="who signs checkpoints: `keys` (the keys service, ML-DSA-65) or `local` (a key in the data folder)",
        check=one_of("local", "keys"),
    )
    audit_signing_key: str = setting("audit-checkpoints", doc="key id at the keys service (audit_signer=keys)")
    audit_local_key_file: Path | None = setting(
        None, doc="local ML-DSA-65 seed (default <data_dir>/audit/checkpoint-signing.key; public key beside it)"
    )
    audit_note_signing_key: str = setting(
        "audit-checkpoints-ed25519", doc="Ed25519 key id at the keys service for checkpoint notes (audit_signer=keys)"
    )
    audit_local_note_key_file: Path | None = setting(
        None, doc="local Ed25519 key for checkpoint notes (default <data_dir>/audit/checkpoint-ed25519.key)"
    )
    audit_signing_key_pins: str = setting(
        "", doc="`KEY_ID@sha256:HEX,…`: checkpoint keys at the keys service must have these public keys"
    )
    audit_log_origin: str = setting("", doc="the log's name on its checkpoints (default `<trust domain>/audit`)")
    audit_witness_dir: Path | None = setting(
        None, doc="publish every checkpoint here (a volume apart from the database); verify checks against it"
    )
    # Used by emitting services (policy, keys, plugins), not by audit itself.
    audit_spool_dir: Path | None = setting(
        None, doc="emitter spool folder (default <data_dir>/spool/<service>; one numbered slot per process)"
    )
    audit_spool_max_bytes: int = setting(
        256 * 1024 * 1024, doc="unshipped audit events an emitter keeps on disk at most", check=positive
    )
    audit_spool_when_full: str = setting(
        "fail", doc="full spool: `fail` refuses the operation (fail closed) or `block` waits",
        check=one_of("fail", "block"),
    )  # fmt: skip
    audit_spool_block_timeout: float = setting(30.0, doc="`block` gives up after this many seconds", check=positive)
    audit_append_timeout: float = setting(
        0.5, doc="seconds an operation waits for audit itself before its event goes to the spool instead",
        check=positive,
    )  # fmt: skip
