"""Wiring of the policy service into the shared server: the PolicyEngine built from settings, its
servicer and Envoy's ext_authz on the same port, who may call which RPC, readiness, hot reload.

Any mesh workload may ask for decisions; signals come from the operators and the configured
reporters only (checked, and audited when refused, by the engine); reloading policy is for
operators. The service is ready once a bundle serves (with the OPA engine, once OPA took it) and
the signal store holds every live signal (a Redis that lost its memory is restored first).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from ztmesh._proto.policy.v1 import policy_pb2_grpc
from ztmesh.audit.client import audit_emitter, spool_root
from ztmesh.mesh.auditing import AuditEmitter
from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.errors import SettingsError, SpiffeIdError
from ztmesh.mesh.peers import PeerChannels
from ztmesh.mesh.server import ServiceApp
from ztmesh.mesh.settings import load_settings
from ztmesh.mesh.spiffe import Authorizer, SpiffeId, authorize_member_of, authorize_service_accounts
from ztmesh.policy.bundle import BundleManager
from ztmesh.policy.bundle_signing import BundleVerifier, parse_trusted_signers
from ztmesh.policy.cache import DecisionCache, MemoryDecisionCache, RedisDecisionCache
from ztmesh.policy.decider import PluginClient, PolicyEngine
from ztmesh.policy.decision_proofs import DecisionProofs
from ztmesh.policy.errors import BundleError, ConfigError, EngineError
from ztmesh.policy.extauthz import AuthorizationServicer, GatewayWorkloads
from ztmesh.policy.inputs import probe_inputs
from ztmesh.policy.opa_inproc import LIBRARY_ENV, OpaEmbeddedEngine
from ztmesh.policy.opa_server import OpaBundleServer, OpaServerEngine
from ztmesh.policy.plugin_source import PluginDataSource, parse_specs
from ztmesh.policy.rego import RegoEngine
from ztmesh.policy.reporters import ReporterGate
from ztmesh.policy.servicer import PolicyServicer
from ztmesh.policy.settings import PolicySettings
from ztmesh.policy.signal_recovery import AuditSignalSource, SignalStoreMonitor
from ztmesh.policy.signals import MemorySignalStore, RedisSignalStore, SignalStore
from ztmesh.policy.trust import TrustScorer
from ztmesh.policy.watch import PolicyWatcher, RedisReloadNotifier

SERVICE = "ztmesh.policy.v1.PolicyService"
AUTHORIZATION = "envoy.service.auth.v3.Authorization"
log = logging.getLogger(__name__)


def decision_plugins(policy: PolicySettings, peers: PeerChannels) -> list[PluginDataSource]:
    try:
        specs = parse_specs(policy.decision_plugins)
    except ValueError as exc:
        raise SettingsError("ZTMESH_DECISION_PLUGINS", str(exc)) from None
    return [PluginDataSource(spec, peers.channel("plugins"), policy.plugin_timeout) for spec in specs]


def opa_server_engine(policy: PolicySettings) -> OpaServerEngine:
    """The OPA-server engine with its bundle endpoint listening (OPA pulls the bundle from it)."""
    host, _, port = policy.opa_bundle_listen.rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError("ZTMESH_OPA_BUNDLE_LISTEN", f"{policy.opa_bundle_listen!r} is not host:port")
    try:
        bundles = OpaBundleServer(host.strip("[]"), int(port))
    except OSError as exc:
        raise SettingsError("ZTMESH_OPA_BUNDLE_LISTEN", f"cannot listen on {policy.opa_bundle_listen}: {exc}") from None
    try:
        return OpaServerEngine(policy.opa_url, bundles, timeout_s=policy.opa_timeout,
                               activation_timeout_s=policy.opa_activation_timeout, owns_bundle_server=True)  # fmt: skip
    except ValueError:
        bundles.close()
        raise


def bundle_verifier(settings: MeshSettings, policy: PolicySettings) -> BundleVerifier | None:
    """Outside dev mode only bundles signed by the configured signers load (None: any bundle)."""
    required = policy.policy_signing_required
    if not (required if required is not None else not settings.dev_mode):
        return None
    if not policy.policy_trusted_signers:
        raise SettingsError(
            "ZTMESH_POLICY_TRUSTED_SIGNERS",
            "outside dev mode only bundles signed by a trusted signer load, and none is configured "
            "(`ztmesh policy sign` prints the entries; ZTMESH_DEV_MODE=true loads unsigned bundles)",
        )
    floor = policy.policy_bundle_floor_file or settings.data_dir / "policy" / "bundle-floor.json"
    try:
        return BundleVerifier(parse_trusted_signers(policy.policy_trusted_signers), floor)
    except BundleError as exc:
        raise SettingsError("ZTMESH_DATA_DIR", str(exc)) from None


def build_engine(
    settings: MeshSettings, policy: PolicySettings, audit: AuditEmitter, plugins: Sequence[PluginClient] = ()
) -> PolicyEngine:
    """The PolicyEngine of these settings; SettingsError (one line naming the setting) if they are wrong."""
    if not policy.policy_dir.is_dir():
        raise SettingsError("ZTMESH_POLICY_DIR", f"{policy.policy_dir} is not a folder")
    try:
        scorer = TrustScorer(policy.trust_files.load())
    except ConfigError as exc:
        raise SettingsError("ZTMESH_TRUST_WEIGHTS", str(exc)) from None
    rego: RegoEngine
    try:
        rego = opa_server_engine(policy) if policy.rego_engine == "opa" else OpaEmbeddedEngine(policy.opa_timeout)
    except ValueError as exc:
        raise SettingsError("ZTMESH_OPA_URL", str(exc)) from None
    except EngineError as exc:  # the in-process OPA library is missing or does not load
        raise SettingsError(LIBRARY_ENV, str(exc)) from None
    signals: SignalStore = (
        RedisSignalStore(settings.redis_url) if settings.redis_url else MemorySignalStore(policy.signal_max_subjects)
    )
    cache: DecisionCache | None = None
    if policy.decision_cache:
        cache = RedisDecisionCache(settings.redis_url) if settings.redis_url else MemoryDecisionCache()
    bundles = BundleManager(policy.policy_dir, rego, probe_inputs(), verifier=bundle_verifier(settings, policy))
    try:
        bundles.reload()
    except BundleError as exc:
        raise SettingsError("ZTMESH_POLICY_DIR", f"policy bundle refused: {exc}") from None
    except EngineError as exc:  # OPA not up yet: not ready until the watcher gets the bundle in
        log.warning("policy bundle not loaded yet, the service is not ready: %s", exc)
    return PolicyEngine(
        bundles, scorer, signals, cache=cache, audit=audit, plugins=plugins, max_batch=policy.max_batch,
        reporters=signal_reporters(settings, policy),
    )  # fmt: skip


def signal_reporters(settings: MeshSettings, policy: PolicySettings) -> ReporterGate:
    """The operators and ZTMESH_SIGNAL_REPORTERS may report signals, each within its rate."""
    for reporter in policy.signal_reporters:
        if SpiffeId.parse(reporter).trust_domain != settings.trust_domain:
            raise SettingsError("ZTMESH_SIGNAL_REPORTERS", f"{reporter} is not in trust domain {settings.trust_domain}")
    operators = [str(settings.workload_id(name)) for name in settings.operators]
    return ReporterGate([*operators, *policy.signal_reporters], policy.signal_rate, policy.signal_burst)


def _is(authorizer: Authorizer, caller: str) -> bool:
    try:
        return authorizer(SpiffeId.parse(caller)) if caller else False
    except SpiffeIdError:
        return False


def build_app(settings: MeshSettings) -> ServiceApp:
    policy = load_settings(PolicySettings, section="policy")
    try:
        workloads = GatewayWorkloads.of(settings.trust_domain, policy.gateway_workloads)
    except ValueError as exc:
        raise SettingsError("ZTMESH_GATEWAY_WORKLOADS", str(exc)) from None
    peers = PeerChannels(settings, "policy")
    # Every decision is durable in the local spool before it is answered; the spool ships to audit.
    audit = audit_emitter(settings, "policy", peers)
    try:
        engine = build_engine(settings, policy, audit, decision_plugins(policy, peers))
    except BaseException:
        audit.close()
        peers.close()
        raise
    notifier = RedisReloadNotifier(settings.redis_url) if settings.redis_url else None
    # A shared store that lost its memory is restored from the audit trail; the in-process one
    # lives and dies with this process.
    spool = spool_root(settings, "policy")  # every policy slot (k8s: every replica's), for unshipped signals
    source = AuditSignalSource(peers.channel("audit"), spool_dir=spool) if settings.redis_url else None
    monitor = SignalStoreMonitor(
        engine.signals, source, lambda: engine.scorer.model.config.behaviour.half_lives, policy.signal_max_clock_skew
    )
    watcher = PolicyWatcher(engine, policy.trust_files, policy.reload_interval, notifier)
    members = authorize_member_of(settings.trust_domain)
    operators = authorize_service_accounts(settings.trust_domain, settings.namespace, settings.operators)
    proofs = DecisionProofs(peers.channel("audit"), lambda caller: _is(operators, caller))
    servicer = PolicyServicer(engine, proofs)
    rules = {
        f"/{SERVICE}/Decide": members,
        f"/{SERVICE}/DecideBatch": members,
        f"/{SERVICE}/ReportSignal": members,
        f"/{SERVICE}/GetPolicyInfo": members,
        f"/{SERVICE}/ProveDecision": members,  # the decision's own caller (checked by DecisionProofs)
        f"/{SERVICE}/ReloadPolicy": operators,
        f"/{AUTHORIZATION}/Check": members,  # Envoy gateways and sidecars, each with its workload identity
    }

    def register(server: grpc.aio.Server) -> None:
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server)
        authorization = AuthorizationServicer(engine, workloads)
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(authorization, server)

    def watch(stop: threading.Event) -> None:
        watcher.start()
        stop.wait()
        watcher.stop()

    def monitor_store(stop: threading.Event) -> None:
        monitor.run(stop)

    def close() -> None:
        engine.engine.close()
        engine.signals.close()
        audit.close()
        peers.close()

    return ServiceApp(
        name="policy",
        register=register,
        service_names=(SERVICE, AUTHORIZATION),
        rules=rules,
        readiness=lambda: engine.bundles.loaded and monitor.ready,
        close=close,
        background=[watch, monitor_store],
    )
