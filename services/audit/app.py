"""Wiring of the audit service into the shared server: store, checkpoint signer, servicer, who may call
which RPC, readiness and the background jobs (timed checkpoints, retention).

Only the emitting services may append; reading and verifying the trail is for operators and policy.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta
from pathlib import Path

from ztmesh.audit.chain import CheckpointSigner, CheckpointVerifier
from ztmesh.audit.checkpoint_keys import CheckpointKeyNotTrusted, KeyServiceNoteSigner, NoteKeys, local_note_keys
from ztmesh.audit.errors import AuditError, SchemaMissing, StoreError
from ztmesh.audit.record import Limits
from ztmesh.audit.servicer import SERVICE, AuditServicer, register
from ztmesh.audit.settings import AuditSettings
from ztmesh.audit.signing import LocalMlDsaSigner
from ztmesh.audit.store import AuditStore
from ztmesh.audit.trail import AuditTrail, TrailSettings
from ztmesh.audit.witness import DirectoryWitness
from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.errors import FatalMisconfiguration, SettingsError
from ztmesh.mesh.peers import PeerChannels
from ztmesh.mesh.server import ServiceApp
from ztmesh.mesh.settings import load_settings
from ztmesh.mesh.spiffe import authorize_either, authorize_member_of, authorize_service_accounts

log = logging.getLogger(__name__)


def open_store(settings: MeshSettings, audit: AuditSettings) -> AuditStore:
    try:
        if settings.database_url:
            from ztmesh.audit.store_postgres import PostgresAuditStore

            return PostgresAuditStore(settings.database_url, partition_unit=audit.audit_partition)
        from ztmesh.audit.store_sqlite import SqliteAuditStore

        return SqliteAuditStore(settings.data_dir / "audit" / "audit.db", partition=audit.audit_partition)
    except SchemaMissing as exc:
        raise SettingsError("ZTMESH_DATABASE_URL", str(exc)) from None
    except StoreError as exc:
        raise SettingsError("ZTMESH_DATABASE_URL" if settings.database_url else "ZTMESH_DATA_DIR", str(exc)) from None


def local_signer(settings: MeshSettings, audit: AuditSettings) -> LocalMlDsaSigner:
    """The embedded default's signing key, kept in the data folder, its public key written beside it."""
    key_file = audit.audit_local_key_file or settings.data_dir / "audit" / "checkpoint-signing.key"
    try:
        signer = LocalMlDsaSigner.load_or_create(key_file)
    except AuditError as exc:
        raise SettingsError("ZTMESH_AUDIT_LOCAL_KEY_FILE", str(exc)) from None
    public = public_key_path(key_file)
    if not public.exists() or public.read_bytes() != signer.public_pem():
        candidate = public.with_name(f".{public.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        candidate.write_bytes(signer.public_pem())
        os.replace(candidate, public)  # atomic: a reader never sees half a key
    return signer


def public_key_path(key_file: Path) -> Path:
    return key_file.with_name("checkpoint-public.pem")


def verifier_key_path(note_key_file: Path) -> Path:
    return note_key_file.with_name("checkpoint-note.vkey")


def write_verifier_key(note_key_file: Path, keys: NoteKeys) -> None:
    """The Ed25519 verifier key in the text form note verifiers and witnesses take, beside the key."""
    text = "".join(v.vkey() + "\n" for v in keys.verifiers() if v.algorithm == "ed25519")
    path = verifier_key_path(note_key_file)
    if not path.exists() or path.read_text() != text:
        candidate = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        candidate.write_text(text)
        os.replace(candidate, path)


def parse_key_pins(text: str) -> dict[str, str]:
    """`KEY_ID@sha256:HEX,…` (what `ztmesh keys fingerprint` prints) as {key id: fingerprint}."""
    pins = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_id, _, fingerprint = item.partition("@")
        if not key_id or not fingerprint.startswith("sha256:") or len(fingerprint) != 71:
            raise SettingsError("ZTMESH_AUDIT_SIGNING_KEY_PINS", f"{item!r} is not KEY_ID@sha256:<64 hex digits>")
        pins[key_id] = fingerprint
    return pins


def build_app(settings: MeshSettings) -> ServiceApp:
    audit = load_settings(AuditSettings, section="audit")
    members = authorize_member_of(settings.trust_domain)
    operators = authorize_service_accounts(settings.trust_domain, settings.namespace, settings.operators)
    verifiers = authorize_service_accounts(settings.trust_domain, settings.namespace, ["audit-verify"])
    emitters = authorize_service_accounts(settings.trust_domain, settings.namespace, ["policy", "plugins", "keys"])
    readers = authorize_service_accounts(settings.trust_domain, settings.namespace, ["policy"])
    rules = {
        f"/{SERVICE}/Append": emitters,
        # policy reads back its `policy.signal` events to restore a signal store that lost its memory.
        f"/{SERVICE}/Query": authorize_either(operators, readers),
        f"/{SERVICE}/Verify": authorize_either(operators, verifiers),
        f"/{SERVICE}/GetCheckpoint": members,
        # A proof carries the whole record: for those who may read the trail (policy answers for its decisions).
        f"/{SERVICE}/ProveInclusion": authorize_either(operators, verifiers, readers),
        f"/{SERVICE}/ProveConsistency": members,  # hashes only
    }
    peers: PeerChannels | None = None
    signer: CheckpointSigner
    verifier: CheckpointVerifier
    origin = audit.audit_log_origin or f"{settings.trust_domain}/audit"
    remote_note_signers: list[KeyServiceNoteSigner] = []
    if audit.audit_signer == "keys":
        from ztmesh.audit.keysign import KeyServiceSigner

        peers = PeerChannels(settings, "audit")
        owner = str(settings.workload_id("audit"))
        readers = f"spiffe://{settings.trust_domain}/*"
        signer = verifier = KeyServiceSigner(
            peers.channel("keys"), audit.audit_signing_key, owner=owner, readers=readers
        )
        pins = parse_key_pins(audit.audit_signing_key_pins)
        remote_note_signers = [
            KeyServiceNoteSigner(
                peers.channel("keys"),
                origin=origin,
                key_id=key_id,
                algorithm=algorithm,
                owner=owner,
                readers=[readers],
                pinned=pins.get(key_id, ""),
            )  # fmt: skip
            for key_id, algorithm in ((audit.audit_note_signing_key, "ed25519"), (audit.audit_signing_key, "ml-dsa-65"))
        ]
        note_keys = NoteKeys(tuple(remote_note_signers))
    else:
        local = local_signer(settings, audit)
        signer = verifier = local
        note_key_file = audit.audit_local_note_key_file or settings.data_dir / "audit" / "checkpoint-ed25519.key"
        try:
            note_keys = local_note_keys(origin, note_key_file, local)
        except AuditError as exc:
            raise SettingsError("ZTMESH_AUDIT_LOCAL_NOTE_KEY_FILE", str(exc)) from None
        write_verifier_key(note_key_file, note_keys)
    witness = DirectoryWitness(audit.audit_witness_dir, note_keys.verifiers) if audit.audit_witness_dir else None
    store = open_store(settings, audit)
    trail_settings = TrailSettings(
        checkpoint_every=audit.audit_checkpoint_every,
        checkpoint_interval=audit.audit_checkpoint_interval,
        max_batch=audit.audit_max_batch,
        retention=timedelta(days=audit.audit_retention_days),
    )
    trail = AuditTrail(store, signer, verifier, trail_settings, note_keys=note_keys, origin=origin, witness=witness)
    servicer = AuditServicer(trail, Limits(max_details_bytes=audit.audit_max_details_bytes))
    key_ready = threading.Event()
    if audit.audit_signer == "local":
        key_ready.set()

    def readiness() -> bool:
        if not key_ready.is_set():
            try:
                signer.ensure_key()  # type: ignore[attr-defined]
                for note_signer in remote_note_signers:
                    note_signer.ensure()
                key_ready.set()
            except CheckpointKeyNotTrusted as exc:  # a squatted or swapped key: never sign with it
                raise FatalMisconfiguration(f"ZTMESH_AUDIT_SIGNING_KEY: {exc}") from None
            except AuditError as exc:
                log.warning("checkpoint key not ready: %s", exc)
                return False
        store.head()  # raises while the database is unreachable
        return True

    def retention(stopping: threading.Event) -> None:
        while not stopping.wait(audit.audit_retention_check):
            try:
                result = trail.prune()
                if result:
                    log.info("retention pruned %d records", result.records_dropped)
            except Exception:  # a failed run is retried at the next tick; the trail keeps serving
                log.exception("audit retention failed")

    def close() -> None:
        try:
            trail.checkpoint()  # sign what arrived since the last checkpoint
        except Exception:
            log.exception("final audit checkpoint failed")
        store.close()
        if peers is not None:
            peers.close()

    return ServiceApp(
        name="audit",
        register=lambda server: register(servicer, server),
        service_names=(SERVICE,),
        rules=rules,
        readiness=readiness,
        close=close,
        background=[trail.run_checkpoints, retention],
    )
