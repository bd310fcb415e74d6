"""Server bootstrap shared by the four services: mTLS listener, interceptor, health, reflection,
metrics, readiness and graceful shutdown, on one asyncio gRPC stack (grpc.aio).

A service hands `MeshServer` a `ServiceApp` — how to register its servicers, who may call which
method, and how to tell that its dependencies are ready — and gets everything else from here. The
server runs on the process's serving loop (ztmesh.mesh.loop); `start` and `stop` are called from any
other thread. `async def` handlers run on the loop, blocking ones in the server's thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.errors import FatalMisconfiguration
from ztmesh.mesh.interceptors import AdmittingServer, MeshInterceptor, MethodRules
from ztmesh.mesh.loop import run_on_loop
from ztmesh.mesh.metrics import serve_metrics
from ztmesh.mesh.spiffe import Authorizer, authorize_member_of
from ztmesh.mesh.tls import KeyExchangeGuard, ReloadingServerCredentials, TlsFiles

log = logging.getLogger(__name__)
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
LIVENESS = "liveness"  # health service name that is SERVING whenever the process runs
_SIGNAL_POLL_S = 0.25  # how soon a signal another thread caught is handled (see run_until_signalled)


def _always_ready() -> bool:
    return True


def _nothing() -> None:
    return None


@dataclass
class ServiceApp:
    """What a service contributes to the shared server."""

    name: str
    register: Callable[[grpc.aio.Server], None]
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
        # Blocking handlers (stores, wasmtime, admin RPCs) run here; the hot RPCs never leave the loop.
        self.pool = futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix=app.name)
        self._interceptor = MeshInterceptor(
            app.name, MethodRules(rules), self.pool, KeyExchangeGuard() if settings.tls_require_pq else None
        )
        self.server: grpc.aio.Server | None = None
        self.health: HealthServicer | None = None
        self._stopping = threading.Event()
        self._stop_requested = threading.Event()
        self.fatal: FatalMisconfiguration | None = None
        self._threads: list[threading.Thread] = []
        self._readiness: asyncio.Task[None] | None = None
        self._probe_server: grpc.aio.Server | None = None
        self.port = 0

    def start(self) -> None:
        run_on_loop(self._start())
        for job in self.app.background:
            thread = threading.Thread(target=job, args=(self._stopping,), daemon=True, name=f"{self.app.name}-bg")
            thread.start()
            self._threads.append(thread)
        log.info("serving %s on %s:%d", self.app.name, self.settings.host, self.port, extra={"port": self.port})

    async def _start(self) -> None:
        s = self.settings
        server = self.server = AdmittingServer(self._interceptor, self.pool, [("grpc.so_reuseport", 1)])
        health = self.health = HealthServicer()
        self.app.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection((*self.app.service_names, HEALTH_SERVICE, REFLECTION_SERVICE), server)
        await self._set_serving(False)
        # Liveness is not readiness: a pod whose dependencies are down must not be restarted for it.
        await health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        address = f"{s.host}:{s.service_port(self.app.name)}"
        self.port = server.add_secure_port(address, self.tls.credentials())
        if not self.port:
            raise OSError(f"cannot listen on {address} (in use?)")
        await server.start()
        health_port = s.service_health_port(self.app.name)
        if health_port:
            # Kubelet's gRPC probes cannot do mTLS; this listener serves nothing but health.
            self._probe_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(health, self._probe_server)
            if not self._probe_server.add_insecure_port(f"{s.host}:{health_port}"):
                raise OSError(f"cannot listen on {s.host}:{health_port} for health probes")
            await self._probe_server.start()
        serve_metrics(s.host, s.service_metrics_port(self.app.name))
        self._readiness = asyncio.get_running_loop().create_task(self._watch_readiness())

    async def _set_serving(self, ready: bool) -> None:
        assert self.health is not None
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.app.service_names):
            await self.health.set(name, status)

    async def _watch_readiness(self) -> None:
        ready = None
        while not self._stopping.is_set():
            try:  # a probe may ask a store or OPA over the network: never on the loop
                now_ready = bool(await asyncio.to_thread(self.app.readiness))
            except FatalMisconfiguration as exc:
                log.critical("%s cannot run: %s", self.app.name, exc)
                self.fatal = exc
                self._stop_requested.set()
                return
            except Exception:  # a failing probe means not ready, never a dead watcher
                log.exception("readiness check failed")
                now_ready = False
            if now_ready != ready:
                await self._set_serving(now_ready)
                log.info("health: %s", "SERVING" if now_ready else "NOT_SERVING")
                ready = now_ready
            await asyncio.sleep(2.0 if ready else 0.2)

    async def _stop(self, grace: float) -> None:
        if self._readiness is not None:
            self._readiness.cancel()
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace)
        if self._probe_server is not None:
            await self._probe_server.stop(0)

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within the grace period, then release resources."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        grace = self.settings.grace_period if grace is None else grace
        run_on_loop(self._stop(grace))
        for thread in self._threads:
            thread.join(timeout=grace)
        self.pool.shutdown(wait=False)
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
        # Never one untimed wait: the kernel may hand SIGTERM to any of our threads (gRPC's, the pools'),
        # and Python runs the handler only when the main thread next runs bytecode (CPython issue 85300);
        # a main thread asleep for good would then never see it, and kubelet would SIGKILL the pod.
        while not stop_requested.wait(_SIGNAL_POLL_S):
            pass
        self.stop()
