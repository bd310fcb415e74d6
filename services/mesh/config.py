"""Settings every service shares: identity, listeners, TLS files, stores and peer addresses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ztmesh.mesh.errors import SettingsError
from ztmesh.mesh.settings import one_of, port_check, positive, setting
from ztmesh.mesh.spiffe import SpiffeId
from ztmesh.mesh.topology import SERVICES


@dataclass(frozen=True)
class MeshSettings:
    """Settings shared by the four services (environment `ZTMESH_<NAME>`, YAML top-level keys)."""

    trust_domain: str = setting("ztmesh.local", doc="SPIFFE trust domain of the mesh")
    namespace: str = setting("ztmesh", doc="Kubernetes namespace in the services' SPIFFE IDs")
    host: str = setting("127.0.0.1", doc="address the gRPC, health and metrics listeners bind to")
    port: int | None = setting(None, doc="gRPC port (default: the service's, 50051-50054)", check=port_check)
    metrics_port: int | None = setting(
        None, doc="Prometheus /metrics port (default 9101-9104; 0 turns it off)", check=port_check
    )
    health_port: int | None = setting(
        None,
        doc="plaintext port serving only grpc.health.v1, for kubelet probes (default 9111-9114; 0 = off)",
        check=port_check,
    )
    cert_dir: Path = setting(Path("certs"), doc="folder of `ztmesh certs init` (ca.crt, <service>.crt/.key)")
    tls_cert: Path | None = setting(None, doc="certificate file (default <cert_dir>/<service>.crt)")
    tls_key: Path | None = setting(None, doc="private key file (default <cert_dir>/<service>.key)")
    tls_ca: Path | None = setting(None, doc="CA bundle trusted for peers (default <cert_dir>/ca.crt)")
    tls_require_pq: bool = setting(
        False,
        doc="refuse calls over connections that did not negotiate X25519MLKEM768 (classical-only key exchange)",
    )
    data_dir: Path = setting(Path("var"), doc="folder for embedded stores (SQLite), spools and caches")
    database_url: str = setting("", doc="postgresql://… DSN; empty = embedded SQLite in data_dir")
    redis_url: str = setting("", doc="redis://… URL; empty = in-process store")
    require_store_tls: bool = setting(
        False,
        doc="refuse a database_url without sslmode=verify-full and a redis_url that is not a verified rediss://",
    )
    operators: tuple[str, ...] = setting(
        ("client",), doc="service accounts allowed the admin RPCs (comma-separated), e.g. the `client` cert"
    )
    dev_mode: bool = setting(False, doc="dev mode: relaxes plugin signing; never in production")
    log_level: str = setting("INFO", doc="log level", check=one_of("DEBUG", "INFO", "WARNING", "ERROR"))
    grace_period: float = setting(10.0, doc="seconds in-flight calls get to finish on SIGTERM", check=positive)
    max_workers: int = setting(
        16, doc="threads per server process for blocking handlers (the hot RPCs run on its event loop)", check=positive
    )
    processes: int = setting(
        1, doc="server processes sharing the gRPC port (SO_REUSEPORT); use one per core for throughput", check=positive
    )
    policy_addr: str = setting("localhost:50051", doc="host:port of the policy service")
    plugins_addr: str = setting("localhost:50052", doc="host:port of the plugins service")
    keys_addr: str = setting("localhost:50053", doc="host:port of the keys service")
    audit_addr: str = setting("localhost:50054", doc="host:port of the audit service")

    def __post_init__(self) -> None:
        if self.require_store_tls:
            problem = _database_tls_problem(self.database_url)
            if problem:
                raise SettingsError("ZTMESH_DATABASE_URL", f"{problem} (ZTMESH_REQUIRE_STORE_TLS is on)")
            problem = _redis_tls_problem(self.redis_url)
            if problem:
                raise SettingsError("ZTMESH_REDIS_URL", f"{problem} (ZTMESH_REQUIRE_STORE_TLS is on)")

    def workload_id(self, service_account: str) -> SpiffeId:
        return SpiffeId.for_workload(self.trust_domain, self.namespace, service_account)

    def peer_address(self, service: str) -> str:
        return str(getattr(self, f"{service}_addr"))

    def service_port(self, service: str) -> int:
        return self.port if self.port is not None else SERVICES[service].port

    def service_metrics_port(self, service: str) -> int:
        return self.metrics_port if self.metrics_port is not None else SERVICES[service].metrics_port

    def service_health_port(self, service: str) -> int:
        return self.health_port if self.health_port is not None else SERVICES[service].health_port

    def tls_files(self, identity: str) -> tuple[Path, Path, Path]:
        """(certificate, key, CA bundle) paths for a service or client identity."""
        return (
            self.tls_cert or self.cert_dir / f"{identity}.crt",
            self.tls_key or self.cert_dir / f"{identity}.key",
            self.tls_ca or self.cert_dir / "ca.crt",
        )


def _database_tls_problem(dsn: str) -> str | None:
    """Why `dsn` would not reach PostgreSQL over TLS with the server's certificate and name verified."""
    if not dsn:
        return None  # the embedded SQLite file: no network hop
    from psycopg import conninfo

    try:
        params = conninfo.conninfo_to_dict(dsn)
    except Exception:  # psycopg names the problem, but its message may quote the password
        return "is not a valid PostgreSQL DSN"
    mode = params.get("sslmode")
    if mode != "verify-full":
        return f"must say sslmode=verify-full, not {mode or 'nothing (libpq would try plaintext)'}"
    return None


def _redis_tls_problem(url: str) -> str | None:
    """Why `url` would not reach Redis over TLS with the server's certificate and name verified."""
    if not url:
        return None  # the in-process store: no network hop
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return f"must be a rediss:// URL (TLS), not {parts.scheme}://"
    query = {k.lower(): v[-1].lower() for k, v in parse_qs(parts.query).items()}
    if query.get("ssl_cert_reqs", "required") != "required":
        return "must not relax certificate verification (ssl_cert_reqs)"
    if query.get("ssl_check_hostname", "true") in ("false", "0", "no", "off"):
        return "must not turn off host name verification (ssl_check_hostname)"
    return None
