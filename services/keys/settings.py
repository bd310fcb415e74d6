"""Settings of the keys service (environment `ZTMESH_*`, YAML section `keys:`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ztmesh.mesh.settings import setting


@dataclass(frozen=True)
class KeysSettings:
    kek: str = setting("", doc="key-encryption key, base64 of 32 bytes (prefer ZTMESH_KEK_FILE)")
    kek_file: Path | None = setting(None, doc="file holding the KEK (base64), e.g. a mounted Kubernetes Secret")
    shred_ledger: Path | None = setting(
        None, doc="per-version secrets file (crypto-shredding boundary; default <data_dir>/keys/shred-ledger.json)"
    )
