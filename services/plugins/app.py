"""Wiring of the plugins service into the shared server: its servicer, who may call which RPC.

Policy (and operators) execute plugins; only operators register or remove them. A module signature
counts only by a key on the operator's trusted-signer list (ZTMESH_PLUGIN_TRUSTED_SIGNERS); its
public key comes from the keys service over mTLS with the plugins workload's own certificate.
"""

from __future__ import annotations

from ztmesh._proto.plugins.v1 import plugins_pb2_grpc
from ztmesh.audit.client import audit_emitter
from ztmesh.mesh.auditing import DeferringEmitter
from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.errors import SettingsError
from ztmesh.mesh.peers import PeerChannels
from ztmesh.mesh.server import ServiceApp
from ztmesh.mesh.settings import load_settings
from ztmesh.mesh.spiffe import authorize_member_of, authorize_service_accounts
from ztmesh.plugins.registry import PluginRegistry
from ztmesh.plugins.sandbox import Limits, Sandbox
from ztmesh.plugins.servicer import PluginServicer
from ztmesh.plugins.settings import PluginsSettings
from ztmesh.plugins.store import open_plugin_store
from ztmesh.plugins.verifier import TRUSTED_SIGNERS, KeyServicePublicKeys, SignerTrust, parse_trusted_signers

SERVICE = "ztmesh.plugins.v1.PluginService"


def operator_maxima(settings: PluginsSettings) -> Limits:
    return Limits(
        fuel=settings.plugin_max_fuel,
        timeout_ms=settings.plugin_max_timeout_ms,
        memory_bytes=settings.plugin_max_memory_bytes,
        table_elements=settings.plugin_max_table_elements,
        max_input_bytes=settings.plugin_max_input_bytes,
        max_output_bytes=settings.plugin_max_output_bytes,
    )


def build_app(settings: MeshSettings) -> ServiceApp:
    plugin_settings = load_settings(PluginsSettings, section="plugins")
    require_signature = (
        plugin_settings.plugin_signing_required
        if plugin_settings.plugin_signing_required is not None
        else not settings.dev_mode
    )
    try:
        trusted = parse_trusted_signers(plugin_settings.plugin_trusted_signers)
    except ValueError as exc:
        raise SettingsError(TRUSTED_SIGNERS, str(exc)) from None
    peers = PeerChannels(settings, "plugins")
    signers = SignerTrust(
        trusted, plugin_settings.plugin_signer_algorithms, KeyServicePublicKeys(peers.channel("keys"))
    )
    sandbox = Sandbox(
        operator_maxima(plugin_settings),
        allowed_capabilities=frozenset(plugin_settings.plugin_capabilities),
        cache_dir=settings.data_dir / "plugins" / "compiled",
    )
    audit = audit_emitter(settings, "plugins", peers)
    deferring = DeferringEmitter(audit)
    registry = PluginRegistry(
        open_plugin_store(settings.database_url, settings.data_dir),
        sandbox,
        signers,
        require_signature=require_signature,
        audit=deferring,
    )
    operators = authorize_service_accounts(settings.trust_domain, settings.namespace, settings.operators)
    executors = authorize_service_accounts(settings.trust_domain, settings.namespace, ["policy", *settings.operators])

    def close() -> None:
        registry.close()
        audit.close()
        peers.close()

    return ServiceApp(
        name="plugins",
        register=lambda server: plugins_pb2_grpc.add_PluginServiceServicer_to_server(
            PluginServicer(registry, deferring), server
        ),
        service_names=(SERVICE,),
        rules={
            f"/{SERVICE}/Execute": executors,
            f"/{SERVICE}/ListPlugins": authorize_member_of(settings.trust_domain),
            f"/{SERVICE}/RegisterPlugin": operators,
            f"/{SERVICE}/UnregisterPlugin": operators,
        },
        close=close,
    )
