"""Settings of the keys service (environment `ZTMESH_*`, YAML section `keys:`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ztmesh.mesh.settings import setting


def reservation_list(entries: tuple[str, ...]) -> str | None:
    for entry in entries:
        key_id, _, owner = entry.partition("=")
        if not key_id.strip() or not owner.strip():
            return f"{entry!r} must be KEY_ID=SERVICE_ACCOUNT or KEY_ID=spiffe://…"
    return None


@dataclass(frozen=True)
class KeysSettings:
    kek: str = setting("", doc="key-encryption key, base64 of 32 bytes (prefer ZTMESH_KEK_FILE)")
    kek_file: Path | None = setting(None, doc="file holding the KEK (base64), e.g. a mounted Kubernetes Secret")
    shred_ledger: Path | None = setting(
        None, doc="per-version secrets file (crypto-shredding boundary; default <data_dir>/keys/shred-ledger.json)"
    )
    key_reserved_ids: tuple[str, ...] = setting(
        ("audit-checkpoints*=audit",),
        doc="key ids the mesh relies on, as ID=SERVICE_ACCOUNT or ID=spiffe://… (ID* = every id it begins): only "
        "that workload may create them (reserve ZTMESH_AUDIT_SIGNING_KEY here if you change it)",
        check=reservation_list,
    )
