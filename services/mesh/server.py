"""Server bootstrap shared by the four services: mTLS listener, interceptor, health, reflection,
metrics, readiness and graceful shutdown.

A service hands `MeshServer` a `ServiceApp` — how to register its servicers, who may call which
method, and how to tell that its dependencies are ready — and gets everything else from here.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.errors import FatalMisconfiguration
from ztmesh.mesh.interceptors import MeshInterceptor, MethodRules
from ztmesh.mesh.metrics import serve_metrics
from ztmesh.mesh.spiffe import Authorizer, authorize_member_of
from ztmesh.mesh.tls import KeyExchangeGuard, ReloadingServerCredentials, TlsFiles

log = logging.getLogger(__name__)
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
LIVENESS = "liveness"  # health service name that is SERVING whenever the process runs


def _always_ready() -> bool:
    return True


def _nothing() -> None:
    return None


@dataclass
class ServiceApp:
    """What a service contributes to the shared server."""

    name: str
    register: Callable[[grpc.Server], None]
    service_names: Sequence[str]
    rules: Mapping[str, Authorizer]
    readiness: Callable[[], bool] = _always_ready
    close: Callable[[], None] = _nothing
    # Extra long-running work (watchers, shippers) started with the server and stopped before close.
    background: list[Callable[[threading.Event], None]] = field(default_factory=list)


class MeshServer:
    def __init__(self, app: ServiceApp, settings: MeshSettings, *, identity: str | None = None) -> None:
        self.app = app
        self.settings = settings
        cert, key, ca = settings.tls_files(identity or app.name)
        self.tls = ReloadingServerCredentials(TlsFiles(cert, key, ca))
        rules = {
            f"/{HEALTH_SERVICE}/*": authorize_member_of(settings.trust_domain),
            f"/{REFLECTION_SERVICE}/*": authorize_member_of(settings.trust_domain),
            **app.rules,
        }
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix=app.name),
            # The guard runs inside the mesh interceptor, so its refusals are counted and logged too.
            interceptors=[
                MeshInterceptor(app.name, MethodRules(rules)),
                *([KeyExchangeGuard()] if settings.tls_require_pq else []),
            ],
            options=[("grpc.so_reuseport", 1)],
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self._stopping = threading.Event()
        self._stop_requested = threading.Event()
        self.fatal: FatalMisconfiguration | None = None
        self._threads: list[threading.Thread] = []
        self._probe_server: grpc.Server | None = None
        self.port = 0

    def start(self) -> None:
        s = self.settings
        self.app.register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*self.app.service_names, HEALTH_SERVICE, REFLECTION_SERVICE), self.server)
        self._set_serving(False)
        # Liveness is not readiness: a pod whose dependencies are down must not be restarted for it.
        self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        address = f"{s.host}:{s.service_port(self.app.name)}"
        self.port = self.server.add_secure_port(address, self.tls.credentials())
        if not self.port:
            raise OSError(f"cannot listen on {address} (in use?)")
        self.server.start()
        health_port = s.service_health_port(self.app.name)
        if health_port:
            # Kubelet's gRPC probes cannot do mTLS; this listener serves nothing but health.
            self._probe_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._probe_server)
            if not self._probe_server.add_insecure_port(f"{s.host}:{health_port}"):
                raise OSError(f"cannot listen on {s.host}:{health_port} for health probes")
            self._probe_server.start()
        serve_metrics(s.host, s.service_metrics_port(self.app.name))
        for job in [self._watch_readiness, *self.app.background]:
            thread = threading.Thread(target=job, args=(self._stopping,), daemon=True, name=f"{self.app.name}-bg")
            thread.start()
            self._threads.append(thread)
        log.info("serving %s on %s", self.app.name, address, extra={"port": self.port})

    def _set_serving(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.app.service_names):
            self.health.set(name, status)

    def _watch_readiness(self, stopping: threading.Event) -> None:
        ready = None
        while not stopping.is_set():
            try:
                now_ready = bool(self.app.readiness())
            except FatalMisconfiguration as exc:
                log.critical("%s cannot run: %s", self.app.name, exc)
                self.fatal = exc
                self._stop_requested.set()
                return
            except Exception:  # a failing probe means not ready, never a dead watcher
                log.exception("readiness check failed")
                now_ready = False
            if now_ready != ready:
                self._set_serving(now_ready)
                log.info("health: %s", "SERVING" if now_ready else "NOT_SERVING")
                ready = now_ready
            stopping.wait(2.0 if ready else 0.2)

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within the grace period, then release resources."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        grace = self.settings.grace_period if grace is None else grace
        self.server.stop(grace).wait()
        if self._probe_server is not None:
            self._probe_server.stop(0)
        for thread in self._threads:
            thread.join(timeout=grace)
        self.app.close()
        log.info("stopped %s", self.app.name)

    def run_until_signalled(self) -> None:
        """Block until SIGTERM or SIGINT, then stop gracefully."""
        stop_requested = self._stop_requested

        def request_stop(signum: int, _frame: object) -> None:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            stop_requested.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        self.start()
        stop_requested.wait()
        self.stop()
