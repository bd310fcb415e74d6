"""Process-level entry points: `ztmesh serve <svc>` (one service) and `ztmesh up` (all four)."""

from __future__ import annotations

import gc
import importlib
import os
import signal
import subprocess
import sys
import threading
import time

from ztmesh.mesh.certs import init_dev_pki
from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.errors import CertificateError, SettingsError
from ztmesh.mesh.log import configure_logging
from ztmesh.mesh.server import MeshServer, ServiceApp
from ztmesh.mesh.settings import load_settings
from ztmesh.mesh.tls import TlsFiles
from ztmesh.mesh.topology import SERVICES, START_ORDER

# Settings that name one process's own listener or files; `up` must not hand them to all four.
_PER_PROCESS_SETTINGS = (
    "ZTMESH_PORT",
    "ZTMESH_METRICS_PORT",
    "ZTMESH_HEALTH_PORT",
    "ZTMESH_TLS_CERT",
    "ZTMESH_TLS_KEY",
)


def load_mesh_settings() -> MeshSettings:
    return load_settings(MeshSettings, ignore_keys=frozenset(SERVICES))


def build_app(service: str, settings: MeshSettings) -> ServiceApp:
    module = importlib.import_module(f"ztmesh.{service}.app")
    app: ServiceApp = module.build_app(settings)
    return app


def _check_tls_files(settings: MeshSettings, service: str) -> None:
    """Name the setting behind a missing or broken certificate file, not just the path."""
    cert, key, ca = settings.tls_files(service)
    for path, explicit, env in (
        (cert, settings.tls_cert, "ZTMESH_TLS_CERT"),
        (key, settings.tls_key, "ZTMESH_TLS_KEY"),
        (ca, settings.tls_ca, "ZTMESH_TLS_CA"),
    ):
        if not path.is_file():
            setting = env if explicit else f"ZTMESH_CERT_DIR ({env} not set)"
            raise SettingsError(setting, f"file {path} does not exist (run `ztmesh certs init`?)")
    try:
        TlsFiles(cert, key, ca).read()
    except CertificateError as exc:
        raise SettingsError("ZTMESH_TLS_CERT/ZTMESH_TLS_KEY/ZTMESH_TLS_CA", str(exc)) from None


# The cyclic collector's youngest generation is collected every this many allocations. With Python's
# default, 700, the audit service spent ~61-65 us of CPU an Append event under the bench's load; with this
# and the start-up heap frozen, ~56-58.
_GC_YOUNG_THRESHOLD = 20_000


def _settle_heap() -> None:
    """What start-up built (settings, policies, keys, protobuf descriptors) lives as long as the process:
    freeze it out of the collector's reach, so full collections do not walk it again and again, and
    collect the youngest generation less often. Garbage cycles are still collected, a little later."""
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD)


def serve(service: str) -> int:
    settings = load_mesh_settings()
    configure_logging(service, settings.log_level)
    _check_tls_files(settings, service)
    if settings.processes > 1:
        return _serve_processes(service, settings)
    app = build_app(service, settings)
    try:
        server = MeshServer(app, settings)
    except CertificateError as exc:  # replaced on disk since the check above
        app.close()
        raise SettingsError("ZTMESH_TLS_CERT/ZTMESH_TLS_KEY/ZTMESH_TLS_CA", str(exc)) from None
    _settle_heap()
    server.run_until_signalled()
    if server.fatal is not None:
        print(f"ztmesh serve {service}: {server.fatal}", file=sys.stderr)
        return 3
    return 0


def up() -> int:
    """Run the four services as child processes until SIGTERM/SIGINT; stop them all gracefully."""
    settings = load_mesh_settings()
    if not (settings.cert_dir / "ca.crt").exists():
        init_dev_pki(settings.cert_dir, settings.trust_domain, settings.namespace)
        print(f"ztmesh up: created a dev PKI in {settings.cert_dir}", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in _PER_PROCESS_SETTINGS}
    if "ZTMESH_POLICY_SIGNING_REQUIRED" not in env and "ZTMESH_POLICY_TRUSTED_SIGNERS" not in env:
        # The local quick start serves the unsigned shipped pack; a deployment signs its bundles.
        env["ZTMESH_POLICY_SIGNING_REQUIRED"] = "false"
        print("ztmesh up: policy bundles load unsigned (ZTMESH_POLICY_TRUSTED_SIGNERS requires signatures)", flush=True)
    children = []
    for name in START_ORDER:
        children.append(subprocess.Popen([sys.executable, "-m", "ztmesh.cli", "serve", name], env=env))
        info = SERVICES[name]
        print(f"ztmesh up: {name} on {settings.host}:{info.port} (metrics :{info.metrics_port})", flush=True)
    status = _supervise(children, settings.grace_period)
    if status:
        print("ztmesh up: a service stopped unexpectedly; stopped the others", file=sys.stderr)
    return status


def _serve_processes(service: str, settings: MeshSettings) -> int:
    """Run `processes` copies of the service on one port (the kernel spreads connections across them).

    Metrics from all copies are merged by prometheus_client's multiprocess mode and served by this
    parent; the first copy alone serves the plaintext health port."""
    import tempfile

    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    metrics_dir = tempfile.mkdtemp(prefix=f"ztmesh-{service}-metrics-")
    env = {**os.environ, "ZTMESH_PROCESSES": "1", "ZTMESH_METRICS_PORT": "0", "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    children = []
    for index in range(settings.processes):
        child_env = dict(env) if index == 0 else {**env, "ZTMESH_HEALTH_PORT": "0"}
        children.append(subprocess.Popen([sys.executable, "-m", "ztmesh.cli", "serve", service], env=child_env))
    metrics_port = settings.service_metrics_port(service)
    if metrics_port:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
        start_http_server(metrics_port, addr=settings.host, registry=registry)
    return _supervise(children, settings.grace_period)


def _supervise(children: list[subprocess.Popen[bytes]], grace_period: float) -> int:
    """Wait for SIGTERM/SIGINT or a child's death, then stop every child gracefully; 0 if all ended well."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    failed = False
    while not stop.is_set():
        if any(c.poll() is not None for c in children):
            failed = True
            break
        stop.wait(0.5)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_period + 5
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 1 if failed or any(c.returncode != 0 for c in children) else 0
