"""Wiring of the keys service into the shared server: its servicer, who may call which RPC, readiness.

Any mesh workload may reach the RPCs; which caller may use which key for what is decided per key
by the core (each key's access policy), and which workload may create the mesh's own key ids by
the reservations (ZTMESH_KEY_RESERVED_IDS).
"""

from __future__ import annotations

import logging

from ztmesh._proto.keys.v1 import keys_pb2_grpc
from ztmesh.audit.client import audit_emitter
from ztmesh.keys.algorithms import OpenSslProvider
from ztmesh.keys.errors import KeysError
from ztmesh.keys.kek import Kek
from ztmesh.keys.ledger import ShredLedger
from ztmesh.keys.manager import KeyManager
from ztmesh.keys.model import parse_reservations
from ztmesh.keys.servicer import KeyServicer
from ztmesh.keys.settings import KeysSettings
from ztmesh.keys.store import open_key_store
from ztmesh.mesh.auditing import AuditEmitter, DeferringEmitter
from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.errors import SettingsError
from ztmesh.mesh.peers import PeerChannels
from ztmesh.mesh.server import ServiceApp
from ztmesh.mesh.settings import load_settings
from ztmesh.mesh.spiffe import authorize_member_of

SERVICE = "ztmesh.keys.v1.KeyService"
log = logging.getLogger(__name__)


def load_kek(settings: MeshSettings, keys_settings: KeysSettings) -> Kek:
    """The configured KEK; on the embedded default (SQLite) with none configured, a generated dev KEK
    kept in the data folder, so `ztmesh up` works out of the box. PostgreSQL deployments must set one."""
    kek_file = keys_settings.kek_file
    if not keys_settings.kek and kek_file is None and not settings.database_url:
        kek_file = settings.data_dir / "keys" / "dev-kek"
        if not kek_file.exists():
            kek_file.parent.mkdir(parents=True, exist_ok=True)
            kek_file.touch(mode=0o600)
            kek_file.write_text(Kek.generate().to_base64())
            log.warning("no ZTMESH_KEK configured: generated a development KEK in %s", kek_file)
    try:
        return Kek.from_settings(keys_settings.kek, kek_file)
    except KeysError as exc:
        raise SettingsError("ZTMESH_KEK_FILE" if kek_file else "ZTMESH_KEK", str(exc)) from None


def build_manager(settings: MeshSettings, keys_settings: KeysSettings, audit: AuditEmitter) -> KeyManager:
    kek = load_kek(settings, keys_settings)
    ledger_path = keys_settings.shred_ledger or settings.data_dir / "keys" / "shred-ledger.json"
    try:
        reserved = parse_reservations(keys_settings.key_reserved_ids, settings.trust_domain, settings.namespace)
    except KeysError as exc:
        raise SettingsError("ZTMESH_KEY_RESERVED_IDS", str(exc)) from None
    store = open_key_store(settings.database_url, settings.data_dir)
    try:
        return KeyManager(store, OpenSslProvider(), kek, ShredLedger(ledger_path), audit, reserved_ids=reserved)
    except KeysError as exc:
        store.close()
        raise SettingsError("ZTMESH_KEK", str(exc)) from None


def build_app(settings: MeshSettings) -> ServiceApp:
    keys_settings = load_settings(KeysSettings, section="keys")
    peers = PeerChannels(settings, "keys")
    audit = audit_emitter(settings, "keys", peers)
    deferring = DeferringEmitter(audit)
    try:
        manager = build_manager(settings, keys_settings, deferring)
    except BaseException:
        audit.close()
        peers.close()
        raise

    def close() -> None:
        manager.close()
        audit.close()
        peers.close()

    return ServiceApp(
        name="keys",
        register=lambda server: keys_pb2_grpc.add_KeyServiceServicer_to_server(KeyServicer(manager, deferring), server),
        service_names=(SERVICE,),
        rules={f"/{SERVICE}/*": authorize_member_of(settings.trust_domain)},
        close=close,
    )
